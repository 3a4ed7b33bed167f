/**
 * Codecs for the two GuestService messages that carry block data, ReadDiskResponse and
 * WriteDiskRequest, the same bytes on the wire as the generated ones (tests check both
 * ways). The generated codecs copy a block three times or more on its way (a writer that
 * grows by doubling, `finish()`'s slice, `Buffer.from`); these write it once and read it
 * as a view of the received message. Every other message keeps the generated codec.
 */
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  GuestServiceService,
  ReadDiskResponse,
  ScsiAddress,
  WriteDiskRequest,
} from '../proto/gen/passthru/host/v1/host.js';

/** Bytes of `n` as a base-128 varint. */
function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[at++] = n;
  return at;
}

/** Blocks with bytes before them that are free to overwrite, and how many. */
const spareHead = new WeakMap<Uint8Array, number>();

/**
 * Says that the `bytes` bytes before `block` (in the same memory) are free to overwrite:
 * the data plane hands a block read inside its reply frame, whose header is spent once read,
 * and the ReadDisk encoder then writes its field header there instead of copying the block.
 */
export function markSpareHead(block: Buffer, bytes: number): Buffer {
  if (bytes > 0 && block.byteOffset >= bytes) spareHead.set(block, bytes);
  return block;
}

/** Field 1 (bytes) `data`: in place before the block when it has room there, else written once. */
export function encodeReadDiskResponse(res: ReadDiskResponse): Buffer {
  const n = res.data.length;
  if (n === 0) return Buffer.alloc(0);
  const head = 1 + varintSize(n);
  if ((spareHead.get(res.data) ?? 0) >= head) {
    const d = res.data;
    const out = Buffer.from(d.buffer, d.byteOffset - head, head + n);
    out[0] = 0x0a;
    writeVarint(out, 1, n);
    return out;
  }
  const out = Buffer.allocUnsafe(head + n);
  const at = writeVarint(out, 1, n);
  out[0] = 0x0a;
  out.set(res.data, at);
  return out;
}

/** A view of a bytes field inside the received message: no copy. */
function bytesView(reader: BinaryReader, buf: Buffer): Buffer {
  const view = reader.bytes();
  return Buffer.from(buf.buffer, view.byteOffset, view.byteLength);
}

export function decodeReadDiskResponse(buf: Buffer): ReadDiskResponse {
  const reader = new BinaryReader(buf);
  const res: ReadDiskResponse = { data: Buffer.alloc(0) };
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === 0x0a) res.data = bytesView(reader, buf);
    else if ((tag & 7) === 4 || tag === 0) break;
    else reader.skip(tag & 7);
  }
  return res;
}

/** Fields 1-3 as the generated code writes them, then field 4 `data` from its own buffer. */
export function encodeWriteDiskRequest(req: WriteDiskRequest): Buffer {
  const head = new BinaryWriter();
  if (req.requestId !== '') head.uint32(10).string(req.requestId);
  if (req.address !== undefined) ScsiAddress.encode(req.address, head.uint32(18).fork()).join();
  if (req.offsetBytes !== 0n) {
    if (BigInt.asUintN(64, req.offsetBytes) !== req.offsetBytes) throw new Error('value provided for field offsetBytes of type uint64 too large');
    head.uint32(24).uint64(req.offsetBytes);
  }
  const n = req.data.length;
  if (n > 0) head.uint32(34).uint32(n);
  const h = head.finish();
  const out = Buffer.allocUnsafe(h.length + n);
  out.set(h, 0);
  if (n > 0) out.set(req.data, h.length);
  return out;
}

export function decodeWriteDiskRequest(buf: Buffer): WriteDiskRequest {
  const reader = new BinaryReader(buf);
  const req: WriteDiskRequest = { requestId: '', address: undefined, offsetBytes: 0n, data: Buffer.alloc(0) };
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    switch (tag) {
      case 10:
        req.requestId = reader.string();
        continue;
      case 18:
        req.address = ScsiAddress.decode(reader, reader.uint32());
        continue;
      case 24:
        req.offsetBytes = reader.uint64() as bigint;
        continue;
      case 34:
        req.data = bytesView(reader, buf);
        continue;
    }
    if ((tag & 7) === 4 || tag === 0) break;
    reader.skip(tag & 7);
  }
  return req;
}

/** GuestService with these codecs on ReadDisk and WriteDisk, for servers and clients alike. */
export const GuestServiceDefinition = {
  ...GuestServiceService,
  readDisk: { ...GuestServiceService.readDisk, responseSerialize: encodeReadDiskResponse, responseDeserialize: decodeReadDiskResponse },
  writeDisk: { ...GuestServiceService.writeDisk, requestSerialize: encodeWriteDiskRequest, requestDeserialize: decodeWriteDiskRequest },
} as const satisfies typeof GuestServiceService;
