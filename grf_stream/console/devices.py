"""A recording as a browser's camera and microphone, to try the console (or test it) with no devices.

    python -m grf_stream.console.devices talk.mp4 devices/

writes devices/talk.y4m (the frames, 30 a second, 4:2:0) and devices/talk.wav (the sound, mono
16-bit) and prints the Chromium flags that make them its camera and microphone (Chromium loops
both). Frames are written uncompressed: about 7.8 MB a second at 480x360.
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import cv2
import numpy as np

from grf_stream.features.media import read_audio, video_frames

FRAME_RATE = 30


def write_fake_devices(media: Path, folder: Path) -> tuple[Path, Path]:
    """(y4m, wav) of `media` in `folder`, in the formats Chromium's fake capture reads."""
    folder.mkdir(parents=True, exist_ok=True)
    camera, microphone = folder / f"{media.stem}.y4m", folder / f"{media.stem}.wav"
    write_y4m(media, camera)
    write_wav(media, microphone)
    return camera, microphone


def write_y4m(media: Path, path: Path) -> None:
    with open(path, "wb") as out:
        for i, frame in enumerate(video_frames(media, FRAME_RATE)):
            height, width = frame.shape[:2]
            if i == 0:
                out.write(f"YUV4MPEG2 W{width} H{height} F{FRAME_RATE}:1 Ip A1:1 C420jpeg\n".encode())
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, then U, then V
    if path.stat().st_size == 0:
        raise SystemExit(f"{media} has no video frames: give a video file")


def write_wav(media: Path, path: Path) -> None:
    sound = read_audio(media)
    if sound is None:
        raise SystemExit(f"{media} has no sound track: give a recording with sound")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sound.sample_rate))
        out.writeframes((np.clip(sound.samples, -1, 1) * 32767).astype("<i2").tobytes())


def chromium_flags(camera: Path, microphone: Path) -> list[str]:
    """Chromium's flags for fake capture devices fed by these files, allowed without asking."""
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}", f"--use-file-for-fake-audio-capture={microphone}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("media", type=Path, help="a video file with sound (mp4, webm, avi, ...)")
    parser.add_argument("folder", type=Path, help="where to write the .y4m and .wav")
    args = parser.parse_args(argv)
    camera, microphone = write_fake_devices(args.media, args.folder)
    print("chromium " + " ".join(chromium_flags(camera, microphone)) + " http://127.0.0.1:8765/")


if __name__ == "__main__":
    main()
