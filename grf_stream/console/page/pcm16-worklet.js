// The microphone as the server wants it: PCM16 mono at 16 kHz, little-endian, in 100 ms chunks
// posted to the page. The page asks its AudioContext for 16 kHz (the browser resamples properly);
// where a browser runs the context at another rate, each output sample averages the input
// samples it spans (a box filter, enough for speech features).

const RATE = 16000;
const CHUNK = RATE / 10;

class Pcm16Chunker extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / RATE;  // input samples per output sample
    this.phase = 0;
    this.sum = 0;
    this.count = 0;
    this.fresh();
  }

  fresh() {
    this.chunk = new ArrayBuffer(CHUNK * 2);
    this.view = new DataView(this.chunk);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];  // mono: the first channel
    if (channel) for (const x of channel) this.take(x);
    return true;
  }

  take(x) {
    this.sum += x;
    this.count += 1;
    this.phase += 1;
    if (this.phase >= this.ratio) {
      this.phase -= this.ratio;
      this.put(this.sum / this.count);
      this.sum = 0;
      this.count = 0;
    }
  }

  put(x) {
    const clipped = Math.max(-1, Math.min(1, x));
    this.view.setInt16(2 * this.filled, Math.round(clipped * 32767), true);
    if (++this.filled === CHUNK) {
      this.port.postMessage(this.chunk, [this.chunk]);
      this.fresh();
    }
  }
}

registerProcessor("pcm16-chunker", Pcm16Chunker);
