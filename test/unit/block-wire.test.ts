/**
 * The block portal's wire format (common/block-wire.ts) and the GuestService block message
 * codecs (common/block-messages.ts): what is encoded decodes to the same thing, however the
 * bytes are cut on their way; what breaks the format is refused before anything is kept; and
 * the hand-written codecs put exactly the generated codecs' bytes on the wire.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  decodeReply,
  decodeRequest,
  DirectFrameReader,
  encodeReply,
  encodeRequest,
  FrameReader,
  MAX_FRAME_BYTES,
  ProtocolError,
  type PortalReply,
  type PortalRequest,
} from '../../common/block-wire.js';
import { decodeReadDiskResponse, decodeWriteDiskRequest, encodeReadDiskResponse, encodeWriteDiskRequest, markSpareHead } from '../../common/block-messages.js';
import { ReadDiskResponse, WriteDiskRequest } from '../../proto/gen/passthru/host/v1/host.js';

const frameBody = (bufs: Buffer[]): Buffer => Buffer.concat(bufs).subarray(4);

const requests: PortalRequest[] = [
  { op: 'login', tag: 1, version: 1, initiator: 'iqn.1991-05.com.microsoft:node1' },
  { op: 'read', tag: 2, lun: '/vol/vol1/lün-ü', offsetBytes: 2n ** 40n, lengthBytes: 1024 * 1024 },
  { op: 'write', tag: 0xffffffff, lun: 'PTSM00000001', offsetBytes: 512n, requestId: 'vm:vm1:abc', data: Buffer.from('hello, sectors') },
  { op: 'write', tag: 7, lun: 'PTSM00000001', offsetBytes: 0n, requestId: '', data: Buffer.alloc(0) },
];

const replies: PortalReply[] = [
  { op: 'login', tag: 1, code: 0, version: 1, maxIoBytes: 1048576 },
  { op: 'read', tag: 2, code: 0, data: Buffer.alloc(4096, 0xab) },
  { op: 'write', tag: 3, code: 0, writtenBytes: 512 },
  { op: 'write', tag: 4, code: 9, reason: 'RESERVATION_CONFLICT', field: '', message: 'reservation conflict: LUN reserved by another node' },
  { op: 'read', tag: 5, code: 3, reason: 'INVALID_ARGUMENT', field: 'length_bytes', message: 'length ünicode' },
];

describe('block portal wire format', () => {
  it('every request decodes to what was encoded, the write data travelling as its own buffer', () => {
    for (const req of requests) {
      const bufs = encodeRequest(req);
      if (req.op === 'write' && req.data.length > 0) expect(bufs[1]).to.equal(req.data);
      const got = decodeRequest(frameBody(bufs));
      expect(got).to.deep.equal(req);
    }
  });

  it('every reply (OK or an error with reason, field and message) decodes to what was encoded', () => {
    for (const rep of replies) expect(decodeReply(frameBody(encodeReply(rep)))).to.deep.equal(rep);
  });

  it('a stream of frames cut anywhere comes out as the same frames, oldest first, with both readers', () => {
    const stream = Buffer.concat([...requests, ...requests].flatMap((r) => encodeRequest(r)));
    const expected = [...requests, ...requests];
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 60 }), (cuts) => {
        // FrameReader: chunks as a socket's 'data' events would give them.
        const r = new FrameReader();
        const got: PortalRequest[] = [];
        let at = 0;
        for (let i = 0; at < stream.length; i++) {
          const n = cuts[i % cuts.length]!;
          for (const f of r.push(stream.subarray(at, at + n))) got.push(decodeRequest(f));
          at += n;
        }
        expect(got).to.deep.equal(expected);
        // DirectFrameReader: the socket writes into the buffer the reader offers, at most its length.
        const d = new DirectFrameReader();
        const got2: PortalRequest[] = [];
        at = 0;
        for (let i = 0; at < stream.length; i++) {
          const into = d.readBuffer();
          const n = Math.min(cuts[i % cuts.length]!, into.length, stream.length - at);
          stream.copy(into, 0, at, at + n);
          at += n;
          for (const f of d.filled(n)) got2.push(decodeRequest(Buffer.from(f)));
        }
        expect(got2).to.deep.equal(expected);
      }),
      { numRuns: 200 },
    );
  });

  it('a large frame is read straight into its own buffer: after its header the reader offers exactly the rest of it', () => {
    const data = Buffer.alloc(1024 * 1024, 0x5a);
    const bytes = Buffer.concat(encodeReply({ op: 'read', tag: 9, code: 0, data }));
    const d = new DirectFrameReader();
    const first = d.readBuffer();
    bytes.copy(first, 0, 0, 100);
    expect(d.filled(100)).to.deep.equal([]);
    const rest = d.readBuffer();
    expect(rest.length).to.equal(bytes.length - 100);
    bytes.copy(rest, 0, 100);
    const [frame] = d.filled(rest.length);
    const rep = decodeReply(frame!) as { data: Buffer };
    expect(rep.data.equals(data)).to.equal(true);
  });

  const hostile: [string, Buffer][] = [
    ['a length under the 8-byte header', Buffer.from([0, 0, 0, 3, 1, 0, 0])],
    ['a length over the largest frame', Buffer.from([0x7f, 0xff, 0xff, 0xff])],
    ['a length just over the largest frame', (() => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(MAX_FRAME_BYTES + 1);
      return b;
    })()],
  ];
  for (const [what, bytes] of hostile) {
    it(`a frame with ${what} is a protocol error before any of it is kept, for both readers`, () => {
      expect(() => new FrameReader().push(bytes)).to.throw(ProtocolError);
      const d = new DirectFrameReader();
      bytes.copy(d.readBuffer());
      expect(() => d.filled(bytes.length)).to.throw(ProtocolError);
    });
  }

  const badBodies: [string, Buffer][] = [
    ['an unknown opcode', Buffer.from([9, 0, 0, 0, 0, 0, 0, 1])],
    ['non-zero reserved bytes', Buffer.from([2, 1, 0, 0, 0, 0, 0, 1])],
    ['a READ that ends inside its offset', Buffer.from([2, 0, 0, 0, 0, 0, 0, 1, 0, 0])],
    ['a LUN length running past the frame', (() => {
      const b = frameBody(encodeRequest({ op: 'read', tag: 1, lun: 'abc', offsetBytes: 0n, lengthBytes: 512 }));
      b.writeUInt16BE(500, 8 + 12);
      return b;
    })()],
    ['stray bytes after a LOGIN', Buffer.concat([frameBody(encodeRequest({ op: 'login', tag: 1, version: 1, initiator: 'iqn.x' })), Buffer.from([1])])],
  ];
  for (const [what, body] of badBodies) {
    it(`a request with ${what} is a protocol error`, () => {
      expect(() => decodeRequest(body)).to.throw(ProtocolError);
    });
  }

  it('a reply with a status that is no gRPC code is a protocol error', () => {
    const b = frameBody(encodeReply(replies[3]!));
    b[1] = 17;
    expect(() => decodeReply(b)).to.throw(ProtocolError, /not a gRPC code/);
  });

  it('a string longer than the format allows cannot be encoded', () => {
    expect(() => encodeRequest({ op: 'read', tag: 1, lun: 'x'.repeat(5000), offsetBytes: 0n, lengthBytes: 512 })).to.throw(ProtocolError, /LUN/);
  });
});

describe('GuestService block message codecs', () => {
  const address = fc.option(fc.record({ controller: fc.integer({ min: 0, max: 3 }), location: fc.integer({ min: 0, max: 63 }) }), { nil: undefined });
  const writeReq = fc.record({
    requestId: fc.string({ maxLength: 40 }),
    address,
    offsetBytes: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    data: fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a)),
  });

  it('WriteDiskRequest: the same bytes as the generated encoder, and each decoder reads the other\'s', () => {
    fc.assert(
      fc.property(writeReq, (req) => {
        const generated = Buffer.from(WriteDiskRequest.encode(req).finish());
        const ours = encodeWriteDiskRequest(req);
        expect(ours.equals(generated)).to.equal(true);
        expect(decodeWriteDiskRequest(generated)).to.deep.equal(WriteDiskRequest.decode(generated));
      }),
      { numRuns: 300 },
    );
  });

  it('ReadDiskResponse: the same bytes as the generated encoder (sizes across varint widths), decoded alike', () => {
    for (const n of [0, 1, 127, 128, 16383, 16384, 1024 * 1024]) {
      const res = { data: Buffer.alloc(n, n & 0xff) };
      const generated = Buffer.from(ReadDiskResponse.encode(res).finish());
      expect(encodeReadDiskResponse(res).equals(generated), `${n} bytes`).to.equal(true);
      expect(decodeReadDiskResponse(generated).data.equals(res.data)).to.equal(true);
    }
  });

  it('a block read from the portal is encoded in place, its field header written over the spent frame header: the same bytes, no copy', () => {
    for (const n of [512, 4096, 1024 * 1024]) {
      const data = Buffer.alloc(n, 0x61);
      const frame = Buffer.concat(encodeReply({ op: 'read', tag: 3, code: 0, data })).subarray(4);
      const rep = decodeReply(frame) as { data: Buffer };
      const block = markSpareHead(rep.data, 8);
      const out = encodeReadDiskResponse({ data: block });
      expect(out.equals(Buffer.from(ReadDiskResponse.encode({ data }).finish())), `${n} bytes`).to.equal(true);
      expect(out.buffer).to.equal(frame.buffer);
      expect(rep.data.equals(data), 'the block itself is untouched').to.equal(true);
    }
    // Without room marked before it, a block is copied as before.
    const plain = Buffer.alloc(4096, 1);
    expect(encodeReadDiskResponse({ data: plain }).buffer).to.not.equal(plain.buffer);
  });

  it('the decoders skip fields they do not know, as the generated ones do', () => {
    const extra = Buffer.from([0x28, 0x05, 0x32, 0x02, 0x61, 0x62]); // field 5 varint, field 6 bytes
    const base = Buffer.from(WriteDiskRequest.encode({ requestId: 'r', address: { controller: 1, location: 2 }, offsetBytes: 4096n, data: Buffer.from('abc') }).finish());
    const msg = Buffer.concat([extra, base, extra]);
    expect(decodeWriteDiskRequest(msg)).to.deep.equal(WriteDiskRequest.decode(msg));
    const read = Buffer.concat([extra, Buffer.from(ReadDiskResponse.encode({ data: Buffer.from('xyz') }).finish())]);
    expect(decodeReadDiskResponse(read).data.toString()).to.equal('xyz');
  });

  it('a decoded block is a view of the received message, not a copy', () => {
    const msg = Buffer.from(WriteDiskRequest.encode({ requestId: '', address: undefined, offsetBytes: 0n, data: Buffer.alloc(4096, 1) }).finish());
    const req = decodeWriteDiskRequest(msg);
    msg[msg.length - 1] = 2;
    expect(req.data[4095]).to.equal(2);
  });

  it('a truncated message is refused as the generated decoder refuses it', () => {
    const msg = Buffer.from(WriteDiskRequest.encode({ requestId: 'r', address: undefined, offsetBytes: 0n, data: Buffer.alloc(100) }).finish()).subarray(0, 50);
    expect(() => WriteDiskRequest.decode(msg)).to.throw();
    expect(() => decodeWriteDiskRequest(msg)).to.throw();
  });
});
