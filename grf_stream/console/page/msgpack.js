// msgpack (https://msgpack.org/) for the protocol's messages: nil, bool, int, float, str, bin,
// array and map. Integers are sent as msgpack ints (the server refuses a float where it wants an
// int); other numbers as float 64; Uint8Array as bin.

const utf8In = new TextEncoder();
const utf8Out = new TextDecoder("utf-8", { fatal: true });

export function encode(value) {
  const writer = new Writer();
  writer.value(value);
  return writer.bytes();
}

export function decode(buffer) {
  const reader = new Reader(new Uint8Array(buffer));
  const value = reader.value();
  if (reader.at !== reader.data.length) throw new Error("msgpack: bytes left after one value");
  return value;
}

class Writer {
  constructor() {
    this.data = new Uint8Array(256);
    this.view = new DataView(this.data.buffer);
    this.at = 0;
  }

  bytes() {
    return this.data.subarray(0, this.at);
  }

  room(n) {  // grow by doubling so that appending stays linear
    if (this.at + n <= this.data.length) return;
    const bigger = new Uint8Array(Math.max(this.data.length * 2, this.at + n));
    bigger.set(this.data);
    this.data = bigger;
    this.view = new DataView(bigger.buffer);
  }

  head(byte, size, length) {  // a type byte followed by a big-endian length of 0, 1, 2 or 4 bytes
    this.room(1 + size);
    this.data[this.at++] = byte;
    if (size === 1) this.view.setUint8(this.at, length);
    if (size === 2) this.view.setUint16(this.at, length);
    if (size === 4) this.view.setUint32(this.at, length);
    this.at += size;
  }

  raw(bytes) {
    this.room(bytes.length);
    this.data.set(bytes, this.at);
    this.at += bytes.length;
  }

  value(v) {
    if (v === null || v === undefined) this.head(0xc0, 0);
    else if (v === false || v === true) this.head(v ? 0xc3 : 0xc2, 0);
    else if (typeof v === "number") Number.isSafeInteger(v) ? this.int(v) : this.float(v);
    else if (typeof v === "string") this.str(v);
    else if (v instanceof Uint8Array) this.bin(v);
    else if (v instanceof ArrayBuffer) this.bin(new Uint8Array(v));
    else if (Array.isArray(v)) this.array(v);
    else if (typeof v === "object") this.map(v);
    else throw new TypeError(`msgpack: cannot encode ${typeof v}`);
  }

  int(v) {
    if (v >= 0 && v < 0x80) this.head(v, 0);
    else if (v < 0 && v >= -32) this.head(v & 0xff, 0);
    else if (v >= 0 && v <= 0xffffffff) this.head(0xce, 4, v);
    else if (v >= -0x80000000 && v < 0) {
      this.head(0xd2, 0);
      this.room(4);
      this.view.setInt32(this.at, v);
      this.at += 4;
    } else {
      this.head(0xd3, 0);
      this.room(8);
      this.view.setBigInt64(this.at, BigInt(v));
      this.at += 8;
    }
  }

  float(v) {
    this.head(0xcb, 0);
    this.room(8);
    this.view.setFloat64(this.at, v);
    this.at += 8;
  }

  str(v) {
    const bytes = utf8In.encode(v);
    if (bytes.length < 32) this.head(0xa0 | bytes.length, 0);
    else this.sized(bytes.length, 0xd9, 0xda, 0xdb);
    this.raw(bytes);
  }

  bin(bytes) {
    this.sized(bytes.length, 0xc4, 0xc5, 0xc6);
    this.raw(bytes);
  }

  array(items) {
    if (items.length < 16) this.head(0x90 | items.length, 0);
    else this.sized(items.length, null, 0xdc, 0xdd);
    items.forEach((item) => this.value(item));
  }

  map(object) {
    const entries = Object.entries(object).filter(([, v]) => v !== undefined);
    if (entries.length < 16) this.head(0x80 | entries.length, 0);
    else this.sized(entries.length, null, 0xde, 0xdf);
    for (const [key, v] of entries) {
      this.str(key);
      this.value(v);
    }
  }

  sized(length, byte8, byte16, byte32) {  // the smallest of the 8/16/32-bit length forms
    if (byte8 !== null && length < 0x100) this.head(byte8, 1, length);
    else if (length < 0x10000) this.head(byte16, 2, length);
    else this.head(byte32, 4, length);
  }
}

class Reader {
  constructor(data) {
    this.data = data;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.at = 0;
  }

  take(n) {
    if (this.at + n > this.data.length) throw new Error("msgpack: truncated");
    const start = this.at;
    this.at += n;
    return start;
  }

  value() {
    const byte = this.data[this.take(1)];
    if (byte < 0x80) return byte;
    if (byte >= 0xe0) return byte - 0x100;
    if ((byte & 0xf0) === 0x80) return this.map(byte & 0x0f);
    if ((byte & 0xf0) === 0x90) return this.array(byte & 0x0f);
    if ((byte & 0xe0) === 0xa0) return this.str(byte & 0x1f);
    const v = this.view;
    switch (byte) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(v.getUint8(this.take(1)));
      case 0xc5: return this.bin(v.getUint16(this.take(2)));
      case 0xc6: return this.bin(v.getUint32(this.take(4)));
      case 0xca: return v.getFloat32(this.take(4));
      case 0xcb: return v.getFloat64(this.take(8));
      case 0xcc: return v.getUint8(this.take(1));
      case 0xcd: return v.getUint16(this.take(2));
      case 0xce: return v.getUint32(this.take(4));
      case 0xcf: return Number(v.getBigUint64(this.take(8)));
      case 0xd0: return v.getInt8(this.take(1));
      case 0xd1: return v.getInt16(this.take(2));
      case 0xd2: return v.getInt32(this.take(4));
      case 0xd3: return Number(v.getBigInt64(this.take(8)));
      case 0xd9: return this.str(v.getUint8(this.take(1)));
      case 0xda: return this.str(v.getUint16(this.take(2)));
      case 0xdb: return this.str(v.getUint32(this.take(4)));
      case 0xdc: return this.array(v.getUint16(this.take(2)));
      case 0xdd: return this.array(v.getUint32(this.take(4)));
      case 0xde: return this.map(v.getUint16(this.take(2)));
      case 0xdf: return this.map(v.getUint32(this.take(4)));
      default: throw new Error(`msgpack: type byte 0x${byte.toString(16)} is not used by the protocol`);
    }
  }

  str(n) {
    const start = this.take(n);
    return utf8Out.decode(this.data.subarray(start, start + n));
  }

  bin(n) {
    const start = this.take(n);
    return this.data.slice(start, start + n);
  }

  array(n) {
    return Array.from({ length: n }, () => this.value());
  }

  map(n) {
    const object = {};
    for (let i = 0; i < n; i++) {
      const key = this.value();
      object[key] = this.value();
    }
    return object;
  }
}
