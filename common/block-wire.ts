/**
 * The block portal's wire format: the array's data plane, as iSCSI is a real array's. A
 * host opens one TCP session per node, logs in as that node's initiator, then sends tagged
 * READ and WRITE commands and gets tagged replies, several in flight at once. Block data
 * travels as raw bytes after a small header: no protobuf, no HTTP/2 framing, so a 1 MiB
 * block costs one copy on each side (gRPC's ReadBlocks/WriteBlocks stay the admin's way in).
 *
 * Every frame, both ways: u32 length of the rest of the frame (big-endian), then
 *
 * | off | len | request                          | reply                                  |
 * |-----|-----|----------------------------------|----------------------------------------|
 * |   0 |   1 | opcode: 1 LOGIN, 2 READ, 3 WRITE | the request's opcode                   |
 * |   1 |   1 | 0                                | status: a gRPC code, 0 = OK            |
 * |   2 |   2 | 0                                | 0                                      |
 * |   4 |   4 | tag, chosen by the host          | the request's tag                      |
 * |   8 |   … | the opcode's fields (below)      | OK: the opcode's result; else an error |
 *
 * Fields (integers big-endian, strings UTF-8 with a u16 byte length before them):
 * - LOGIN request: u16 version (1), string initiator. OK reply: u16 version, u32 max I/O bytes.
 * - READ request: u64 offset, u32 length, string LUN (path, uuid or serial). OK reply: the data.
 * - WRITE request: u64 offset, string LUN, string request id (may be empty), then the data
 *   (the rest of the frame). OK reply: u32 bytes written.
 * - Error reply: string reason, string field (the request field at fault, or empty), then
 *   the message (the rest of the frame).
 *
 * A frame that breaks these rules ends the session: after a framing error nothing later on
 * the connection can be trusted.
 */

export const PORTAL_VERSION = 1;
export const MAX_IO_BYTES = 1024 * 1024;
/** Room for the largest header: a LUN path and a request id around 1 MiB of data. */
export const MAX_FRAME_BYTES = MAX_IO_BYTES + 8192;
const MAX_STRING_BYTES = 2048;

export const Op = { login: 1, read: 2, write: 3 } as const;
export type OpName = keyof typeof Op;
const OP_NAMES = new Map<number, OpName>(Object.entries(Op).map(([k, v]) => [v, k as OpName]));

export type PortalRequest =
  | { op: 'login'; tag: number; version: number; initiator: string }
  | { op: 'read'; tag: number; lun: string; offsetBytes: bigint; lengthBytes: number }
  | { op: 'write'; tag: number; lun: string; offsetBytes: bigint; requestId: string; data: Buffer };

export type PortalReply =
  | { op: 'login'; tag: number; code: 0; version: number; maxIoBytes: number }
  | { op: 'read'; tag: number; code: 0; data: Buffer }
  | { op: 'write'; tag: number; code: 0; writtenBytes: number }
  | PortalErrorReply;

export interface PortalErrorReply {
  op: OpName;
  tag: number;
  /** A gRPC status code, 1-16. */
  code: number;
  reason: string;
  field: string;
  message: string;
}

/** The peer broke the wire format; the session cannot go on. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(`block portal protocol error: ${message}`);
    this.name = 'ProtocolError';
  }
}

const HEADER = 4 + 8;
/** Where a READ reply's data starts inside its frame (after opcode, status and tag). */
export const READ_REPLY_HEADER_BYTES = 8;

function stringBytes(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_STRING_BYTES) throw new ProtocolError(`${what} is ${b.length} bytes, more than ${MAX_STRING_BYTES}`);
  return b;
}

/** A frame's length prefix and fixed header, with `extra` bytes of fields after it. */
function header(bodyBytes: number, op: number, code: number, tag: number, extra: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER + extra);
  h.writeUInt32BE(8 + extra + bodyBytes, 0);
  h[4] = op;
  h[5] = code;
  h.writeUInt16BE(0, 6);
  h.writeUInt32BE(tag >>> 0, 8);
  return h;
}

/**
 * The bytes of a request: a header and, for a write, the data as a second buffer, so the
 * caller hands both to the socket and the data is never copied into a frame.
 */
export function encodeRequest(req: PortalRequest): Buffer[] {
  switch (req.op) {
    case 'login': {
      const name = stringBytes(req.initiator, 'initiator');
      const h = header(0, Op.login, 0, req.tag, 4 + name.length);
      h.writeUInt16BE(req.version, HEADER);
      h.writeUInt16BE(name.length, HEADER + 2);
      name.copy(h, HEADER + 4);
      return [h];
    }
    case 'read': {
      const lun = stringBytes(req.lun, 'LUN');
      const h = header(0, Op.read, 0, req.tag, 14 + lun.length);
      h.writeBigUInt64BE(req.offsetBytes, HEADER);
      h.writeUInt32BE(req.lengthBytes, HEADER + 8);
      h.writeUInt16BE(lun.length, HEADER + 12);
      lun.copy(h, HEADER + 14);
      return [h];
    }
    case 'write': {
      const lun = stringBytes(req.lun, 'LUN');
      const id = stringBytes(req.requestId, 'request id');
      const h = header(req.data.length, Op.write, 0, req.tag, 12 + lun.length + id.length);
      h.writeBigUInt64BE(req.offsetBytes, HEADER);
      h.writeUInt16BE(lun.length, HEADER + 8);
      lun.copy(h, HEADER + 10);
      h.writeUInt16BE(id.length, HEADER + 10 + lun.length);
      id.copy(h, HEADER + 12 + lun.length);
      return req.data.length > 0 ? [h, req.data] : [h];
    }
  }
}

export function isErrorReply(rep: PortalReply): rep is PortalErrorReply {
  return rep.code !== 0;
}

export function encodeReply(rep: PortalReply): Buffer[] {
  const op = Op[rep.op];
  if (isErrorReply(rep)) {
    const e = rep;
    const reason = stringBytes(e.reason, 'reason');
    const field = stringBytes(e.field, 'field');
    const message = Buffer.from(e.message, 'utf8').subarray(0, 16 * 1024);
    const h = header(message.length, op, e.code, e.tag, 4 + reason.length + field.length);
    h.writeUInt16BE(reason.length, HEADER);
    reason.copy(h, HEADER + 2);
    h.writeUInt16BE(field.length, HEADER + 2 + reason.length);
    field.copy(h, HEADER + 4 + reason.length);
    return [h, message];
  }
  switch (rep.op) {
    case 'login': {
      const h = header(0, op, 0, rep.tag, 6);
      h.writeUInt16BE(rep.version, HEADER);
      h.writeUInt32BE(rep.maxIoBytes, HEADER + 2);
      return [h];
    }
    case 'read':
      return [header(rep.data.length, op, 0, rep.tag, 0), rep.data];
    case 'write': {
      const h = header(0, op, 0, rep.tag, 4);
      h.writeUInt32BE(rep.writtenBytes, HEADER);
      return [h];
    }
  }
}

/** Reads a frame's fields in order, refusing any that runs past its end. */
class FieldReader {
  private at = 8;
  constructor(private readonly frame: Buffer) {}

  private need(n: number, what: string): void {
    if (this.at + n > this.frame.length) throw new ProtocolError(`frame ends inside its ${what}`);
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.frame.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.frame.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.frame.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  string(what: string): string {
    const n = this.u16(`${what} length`);
    this.need(n, what);
    const v = this.frame.toString('utf8', this.at, this.at + n);
    this.at += n;
    return v;
  }
  /** The rest of the frame, without a copy. */
  rest(): Buffer {
    const v = this.frame.subarray(this.at);
    this.at = this.frame.length;
    return v;
  }
  end(what: string): void {
    if (this.at !== this.frame.length) throw new ProtocolError(`${this.frame.length - this.at} stray bytes after a ${what}`);
  }
}

function opOf(frame: Buffer): OpName {
  if (frame.length < 8) throw new ProtocolError(`a frame of ${frame.length} bytes is shorter than its header`);
  const op = OP_NAMES.get(frame[0]!);
  if (!op) throw new ProtocolError(`unknown opcode ${frame[0]}`);
  return op;
}

/** A request frame (without its length prefix) as the server reads it. */
export function decodeRequest(frame: Buffer): PortalRequest {
  const op = opOf(frame);
  if (frame[1] !== 0 || frame.readUInt16BE(2) !== 0) throw new ProtocolError('reserved header bytes of a request are not zero');
  const tag = frame.readUInt32BE(4);
  const r = new FieldReader(frame);
  switch (op) {
    case 'login': {
      const req = { op, tag, version: r.u16('version'), initiator: r.string('initiator') };
      r.end('LOGIN');
      return req;
    }
    case 'read': {
      const offsetBytes = r.u64('offset');
      const lengthBytes = r.u32('length');
      const req = { op, tag, offsetBytes, lengthBytes, lun: r.string('LUN') };
      r.end('READ');
      return req;
    }
    case 'write': {
      const offsetBytes = r.u64('offset');
      const lun = r.string('LUN');
      const requestId = r.string('request id');
      return { op, tag, offsetBytes, lun, requestId, data: r.rest() };
    }
  }
}

/** A reply frame (without its length prefix) as the host reads it. */
export function decodeReply(frame: Buffer): PortalReply {
  const op = opOf(frame);
  const code = frame[1]!;
  const tag = frame.readUInt32BE(4);
  const r = new FieldReader(frame);
  if (code !== 0) {
    if (code > 16) throw new ProtocolError(`status ${code} is not a gRPC code`);
    const reason = r.string('reason');
    const field = r.string('field');
    return { op, tag, code, reason, field, message: r.rest().toString('utf8') };
  }
  switch (op) {
    case 'login': {
      const rep = { op, tag, code, version: r.u16('version'), maxIoBytes: r.u32('max I/O bytes') } as const;
      r.end('LOGIN reply');
      return rep;
    }
    case 'read':
      return { op, tag, code, data: r.rest() };
    case 'write': {
      const rep = { op, tag, code, writtenBytes: r.u32('bytes written') } as const;
      r.end('WRITE reply');
      return rep;
    }
  }
}

/**
 * Cuts a byte stream into frames. Each frame is gathered into one buffer of its exact size
 * as its bytes arrive (the one copy a frame costs); a frame that would be larger than
 * `maxFrameBytes` is a protocol error before any of it is kept.
 */
export class FrameReader {
  private lengthBytes = Buffer.alloc(4);
  private lengthHave = 0;
  private frame: Buffer | undefined;
  private frameHave = 0;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  /** The whole frames this chunk completes, oldest first. */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (!this.frame) {
        const n = Math.min(4 - this.lengthHave, chunk.length - at);
        chunk.copy(this.lengthBytes, this.lengthHave, at, at + n);
        this.lengthHave += n;
        at += n;
        if (this.lengthHave < 4) break;
        const size = this.lengthBytes.readUInt32BE(0);
        if (size < 8 || size > this.maxFrameBytes) throw new ProtocolError(`a frame of ${size} bytes (from 8 to ${this.maxFrameBytes})`);
        this.lengthHave = 0;
        // A frame inside this chunk needs no copy at all.
        if (chunk.length - at >= size) {
          out.push(chunk.subarray(at, at + size));
          at += size;
          continue;
        }
        this.frame = Buffer.allocUnsafe(size);
        this.frameHave = 0;
      }
      const n = Math.min(this.frame.length - this.frameHave, chunk.length - at);
      chunk.copy(this.frame, this.frameHave, at, at + n);
      this.frameHave += n;
      at += n;
      if (this.frameHave === this.frame.length) {
        out.push(this.frame);
        this.frame = undefined;
      }
    }
    return out;
  }
}

/**
 * Cuts a socket's bytes into frames with the socket reading straight into them: `readBuffer`
 * gives the socket where its next bytes go (net's `onread`), `filled` says how many came.
 * A large frame is read into its own buffer with no copy at all; only headers and small
 * frames pass through a reused scratch buffer (and are copied out of it).
 */
export class DirectFrameReader {
  private readonly scratch = Buffer.allocUnsafe(64 * 1024);
  private start = 0;
  private end = 0;
  private frame: Buffer | undefined;
  private frameHave = 0;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  readBuffer(): Buffer {
    if (this.frame) return this.frame.subarray(this.frameHave);
    if (this.start > 0) {
      this.scratch.copy(this.scratch, 0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    return this.scratch.subarray(this.end);
  }

  /** `n` bytes arrived where `readBuffer` said; the frames they complete, oldest first. */
  filled(n: number): Buffer[] {
    if (this.frame) {
      this.frameHave += n;
      if (this.frameHave < this.frame.length) return [];
      const done = this.frame;
      this.frame = undefined;
      return [done];
    }
    this.end += n;
    const out: Buffer[] = [];
    while (this.end - this.start >= 4) {
      const size = this.scratch.readUInt32BE(this.start);
      if (size < 8 || size > this.maxFrameBytes) throw new ProtocolError(`a frame of ${size} bytes (from 8 to ${this.maxFrameBytes})`);
      const have = this.end - this.start - 4;
      const from = this.start + 4;
      if (have >= size) {
        out.push(Buffer.from(this.scratch.subarray(from, from + size)));
        this.start = from + size;
        continue;
      }
      this.frame = Buffer.allocUnsafe(size);
      this.scratch.copy(this.frame, 0, from, this.end);
      this.frameHave = have;
      this.start = this.end = 0;
      break;
    }
    if (this.start === this.end) this.start = this.end = 0;
    return out;
  }
}
