/**
 * The array's input rules (storage-sim/rules.ts) and the size parser/formatter
 * (common/size.ts): tables of accepted and refused values, then properties checked against
 * oracles written independently of the rules' regular expressions.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { InvalidArgumentError } from '../../common/errors.js';
import { formatSize, parseSize } from '../../common/size.js';
import {
  checkComment,
  checkIgroupName,
  checkIo,
  checkLunSize,
  checkPage,
  checkPathPrefix,
  checkPoolName,
  checkRequestId,
  classifyLunRef,
  DEFAULT_PAGE_SIZE,
  GiB,
  initiatorFits,
  MAX_IO_BYTES,
  MAX_LUN_BYTES,
  MiB,
  MIN_LUN_BYTES,
  pageToken,
  parseInitiator,
  parseLunPath,
  parseReservationKey,
  TiB,
} from '../../storage-sim/rules.js';

/** Runs fn and returns the InvalidArgumentError it must throw; fails the test otherwise. */
function invalid(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(InvalidArgumentError);
    return err as InvalidArgumentError;
  }
  expect.fail('expected an InvalidArgumentError, but the call succeeded');
}

const FAST = { numRuns: 300 };

describe('storage rules: LUN paths', () => {
  const accepted: [string, string, string][] = [
    ['/vol/vol1/lun1', 'vol1', 'lun1'],
    ['/vol/_v/a.b-c_d', '_v', 'a.b-c_d'],
    ['/vol/V9/0lun', 'V9', '0lun'],
    [`/vol/${'v'.repeat(203)}/l`, 'v'.repeat(203), 'l'],
    [`/vol/v/${'n'.repeat(255)}`, 'v', 'n'.repeat(255)],
  ];
  for (const [path, volume, name] of accepted) {
    it(`parseLunPath accepts ${path.length > 40 ? `${path.slice(0, 40)}…` : path} and splits volume and name`, () => {
      expect(parseLunPath('path', path)).to.deep.equal({ path, volume, name });
    });
  }

  const refused: [string, string, RegExp][] = [
    ['empty', '', /path is required/],
    ['no /vol prefix', 'vol/vol1/lun1', /not a LUN path/],
    ['another root', '/volume/v/l', /not a LUN path/],
    ['no LUN name', '/vol/vol1', /not a LUN path/],
    ['an extra level', '/vol/v/a/b', /not a LUN path/],
    ['an empty volume', '/vol//lun', /volume name/],
    ['a volume starting with a digit', '/vol/1vol/lun', /volume name/],
    ['a hyphen in the volume', '/vol/v-1/lun', /volume name/],
    ['a volume of 204 characters', `/vol/${'v'.repeat(204)}/l`, /volume name/],
    ['a LUN name starting with a dot', '/vol/v/.lun', /LUN name/],
    ['a LUN name starting with a hyphen', '/vol/v/-lun', /LUN name/],
    ['a space in the LUN name', '/vol/v/a b', /LUN name/],
    ['a LUN name of 256 characters', `/vol/v/${'n'.repeat(256)}`, /LUN name/],
    ['a non-ASCII LUN name', '/vol/v/lün', /LUN name/],
  ];
  for (const [what, path, message] of refused) {
    it(`parseLunPath refuses a path with ${what} as INVALID_ARGUMENT on the given field`, () => {
      const err = invalid(() => parseLunPath('the_path', path));
      expect(err.field).to.equal('the_path');
      expect(err.message).to.match(message);
    });
  }

  it('checkPathPrefix accepts "", "/", "/vol", "/vol/" and deeper prefixes', () => {
    for (const p of ['', '/', '/vol', '/vol/', '/vol/v1/', '/vol/v1/lun']) expect(checkPathPrefix('path_prefix', p)).to.equal(p);
  });

  it('checkPathPrefix refuses prefixes outside /vol, with control characters, or longer than 470 characters', () => {
    for (const p of ['vol/', '/x', '/volume', '/vol/\n', `/vol/${'a'.repeat(466)}`]) {
      expect(invalid(() => checkPathPrefix('path_prefix', p)).field).to.equal('path_prefix');
    }
    expect(checkPathPrefix('path_prefix', `/vol/${'a'.repeat(465)}`)).to.have.length(470);
  });
});

describe('storage rules: names, comments and request ids', () => {
  it('checkIgroupName accepts letters, digits, _ . : - up to 96 characters, not starting with . : -', () => {
    for (const n of ['host1', 'h_1.a:b-c', '_x', '9x', 'a'.repeat(96)]) expect(checkIgroupName('name', n)).to.equal(n);
  });

  it('checkIgroupName refuses empty, badly started, oversized names and other characters', () => {
    for (const n of ['', '-x', '.x', ':x', 'a b', 'a/b', 'a'.repeat(97), 'ä']) {
      expect(invalid(() => checkIgroupName('igroup', n)).field).to.equal('igroup');
    }
  });

  it('checkIgroupName says the name is required when it is empty', () => {
    expect(invalid(() => checkIgroupName('name', '')).message).to.match(/name is required/);
  });

  it('checkPoolName accepts aggr1, _p and 64 characters; refuses empty, digit-first, hyphens and 65 characters', () => {
    for (const n of ['aggr1', '_p', 'p'.repeat(64)]) expect(checkPoolName('pool', n)).to.equal(n);
    for (const n of ['', '1p', 'p-1', 'p'.repeat(65)]) expect(invalid(() => checkPoolName('pool', n)).field).to.equal('pool');
  });

  it('checkComment accepts up to 254 characters including non-ASCII text', () => {
    for (const c of ['', 'owner: vm-17', 'x'.repeat(254), 'Grüße, 東京']) expect(checkComment('comment', c)).to.equal(c);
  });

  it('checkComment refuses 255 characters and control characters, saying which', () => {
    expect(invalid(() => checkComment('comment', 'x'.repeat(255))).message).to.match(/255 characters long; at most 254/);
    for (const c of ['a\nb', '\u0000', 'tab\there', 'del\u007f']) {
      expect(invalid(() => checkComment('comment', c)).message).to.match(/control characters/);
    }
  });

  it('checkRequestId accepts "" and up to 128 printable ASCII characters without spaces', () => {
    for (const id of ['', 'req-1', '~!@#$%^&*()', 'r'.repeat(128)]) expect(checkRequestId(id)).to.equal(id);
  });

  it('checkRequestId refuses 129 characters, spaces, control and non-ASCII characters on field request_id', () => {
    for (const id of ['r'.repeat(129), 'a b', 'a\tb', 'ré']) expect(invalid(() => checkRequestId(id)).field).to.equal('request_id');
  });
});

describe('storage rules: LUN sizes', () => {
  const ok: [string, bigint][] = [
    ['the 4 MiB minimum', BigInt(MIN_LUN_BYTES)],
    ['the 16 TiB maximum', BigInt(MAX_LUN_BYTES)],
    ['4 MiB plus one sector', BigInt(MIN_LUN_BYTES + 512)],
    ['10 GiB', 10n * BigInt(GiB)],
  ];
  for (const [what, bytes] of ok) {
    it(`checkLunSize accepts ${what} and returns it as a number`, () => {
      expect(checkLunSize('size_bytes', bytes)).to.equal(Number(bytes));
    });
  }
  const bad: [string, bigint, RegExp][] = [
    ['zero (missing)', 0n, /required/],
    ['511 bytes', 511n, /multiple of 512/],
    ['4 MiB plus one byte', BigInt(MIN_LUN_BYTES) + 1n, /multiple of 512/],
    ['4 MiB minus one sector', BigInt(MIN_LUN_BYTES - 512), /out of range/],
    ['16 TiB plus one sector', BigInt(MAX_LUN_BYTES) + 512n, /out of range/],
    ['a negative size', -BigInt(MIN_LUN_BYTES), /out of range/],
    ['2^63', 2n ** 63n, /out of range/],
    ['2^64 - 512', 2n ** 64n - 512n, /out of range/],
  ];
  for (const [what, bytes, message] of bad) {
    it(`checkLunSize refuses ${what} on field size_bytes`, () => {
      const err = invalid(() => checkLunSize('size_bytes', bytes));
      expect(err.field).to.equal('size_bytes');
      expect(err.message).to.match(message);
    });
  }

  it('checkLunSize accepts exactly the multiples of 512 within [4 MiB, 16 TiB] (property)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }), (bytes) => {
        const valid = bytes % 512n === 0n && bytes >= BigInt(MIN_LUN_BYTES) && bytes <= BigInt(MAX_LUN_BYTES);
        if (valid) expect(checkLunSize('size_bytes', bytes)).to.equal(Number(bytes));
        else expect(invalid(() => checkLunSize('size_bytes', bytes)).field).to.equal('size_bytes');
      }),
      FAST,
    );
    // The random draw rarely lands in range; check the accepted side explicitly too.
    fc.assert(
      fc.property(fc.bigInt({ min: BigInt(MIN_LUN_BYTES / 512), max: BigInt(MAX_LUN_BYTES / 512) }), (sectors) => {
        expect(checkLunSize('size_bytes', sectors * 512n)).to.equal(Number(sectors * 512n));
      }),
      FAST,
    );
  });
});

describe('storage rules: LUN references', () => {
  it('classifyLunRef tells a path, a uuid (any case) and a 12-character serial apart', () => {
    expect(classifyLunRef('lun', '/vol/v1/l1')).to.equal('path');
    expect(classifyLunRef('lun', '1b4e28ba-2fa1-11d2-883f-0016d3cca427')).to.equal('uuid');
    expect(classifyLunRef('lun', '1B4E28BA-2FA1-11D2-883F-0016D3CCA427')).to.equal('uuid');
    expect(classifyLunRef('lun', 'PTSMabc12345')).to.equal('serial');
  });

  it('classifyLunRef refuses empty, malformed paths, 11/13-character serials and undashed uuids', () => {
    for (const ref of ['', 'abc', '/vol/v', '/vol/1v/l', 'PTSMabc1234', 'PTSMabc123456', 'PTSM-bc12345', '1b4e28ba2fa111d2883f0016d3cca427']) {
      expect(invalid(() => classifyLunRef('lun', ref)).field).to.equal('lun');
    }
  });
});

describe('storage rules: initiators', () => {
  const canonical: [string, string, 'iscsi' | 'fcp'][] = [
    ['iqn.1991-05.com.microsoft:node1', 'iqn.1991-05.com.microsoft:node1', 'iscsi'],
    ['IQN.1991-05.COM.Microsoft:Node1', 'iqn.1991-05.com.microsoft:node1', 'iscsi'],
    ['  iqn.2024-12.org.example  ', 'iqn.2024-12.org.example', 'iscsi'],
    ['iqn.2001-04.com.ex-ample:host_1.a:b', 'iqn.2001-04.com.ex-ample:host_1.a:b', 'iscsi'],
    ['eui.02004567a425678d', 'eui.02004567A425678D', 'iscsi'],
    ['EUI.02004567A425678D', 'eui.02004567A425678D', 'iscsi'],
    ['20:00:00:25:B5:00:00:01', '20:00:00:25:b5:00:00:01', 'fcp'],
    ['20000025b5000001', '20:00:00:25:b5:00:00:01', 'fcp'],
  ];
  for (const [raw, name, kind] of canonical) {
    it(`parseInitiator reads ${JSON.stringify(raw)} as ${kind} ${name}`, () => {
      expect(parseInitiator('initiator', raw)).to.deep.equal({ name, kind });
    });
  }

  const refused: [string, string][] = [
    ['empty', ''],
    ['an IQN without a date', 'iqn.com.example:n'],
    ['an IQN with month 13', 'iqn.2024-13.com.example'],
    ['an IQN with month 00', 'iqn.2024-00.com.example'],
    ['an IQN with a space', 'iqn.2024-01.com.example:a b'],
    ['an IQN label ending in a hyphen', 'iqn.2024-01.com-.example'],
    ['an IQN longer than 223 characters', `iqn.2024-01.com.example:${'a'.repeat(200)}`],
    ['an EUI with 15 hex digits', 'eui.02004567a425678'],
    ['an EUI with a non-hex digit', 'eui.02004567a425678g'],
    ['a WWPN with 7 bytes', '20:00:00:25:b5:00:01'],
    ['a WWPN with a dash separator', '20-00-00-25-b5-00-00-01'],
    ['a WWPN with 17 hex digits', '20000025b50000010'],
    ['a host name', 'node1.example.com'],
  ];
  for (const [what, raw] of refused) {
    it(`parseInitiator refuses ${what} on the given field`, () => {
      expect(invalid(() => parseInitiator('initiators', raw)).field).to.equal('initiators');
    });
  }

  it('initiatorFits: iscsi igroups take iSCSI names, fcp igroups WWPNs, mixed both', () => {
    expect([initiatorFits('iscsi', 'iscsi'), initiatorFits('iscsi', 'fcp')]).to.deep.equal([true, false]);
    expect([initiatorFits('fcp', 'fcp'), initiatorFits('fcp', 'iscsi')]).to.deep.equal([true, false]);
    expect([initiatorFits('mixed', 'fcp'), initiatorFits('mixed', 'iscsi')]).to.deep.equal([true, true]);
  });

  const hex = (n: number) => fc.array(fc.constantFrom(...'0123456789abcdefABCDEF'), { minLength: n, maxLength: n }).map((a) => a.join(''));
  const label = fc
    .tuple(fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789ABCDEF'), fc.string({ unit: fc.constantFrom(...'abcXYZ019-'), maxLength: 8 }), fc.constantFrom(...'abz09Q'))
    .map(([a, mid, b]) => a + mid + b);
  const iqn = fc
    .tuple(
      fc.integer({ min: 1970, max: 2099 }),
      fc.integer({ min: 1, max: 12 }),
      fc.array(label, { minLength: 1, maxLength: 4 }),
      fc.option(fc.string({ unit: fc.constantFrom(...'abcXYZ019.:_-'), minLength: 1, maxLength: 20 }), { nil: undefined }),
      fc.boolean(),
    )
    .map(([y, m, labels, suffix, upper]) => {
      const s = `iqn.${y}-${String(m).padStart(2, '0')}.${labels.join('.')}${suffix === undefined ? '' : `:${suffix}`}`;
      return upper ? s.toUpperCase() : s;
    });
  const eui = hex(16).map((h) => `eui.${h}`);
  const wwpn = fc.tuple(hex(16), fc.boolean()).map(([h, colons]) => (colons ? h.match(/../g)!.join(':') : h));
  const anyInitiator = fc.oneof(iqn, eui, wwpn);

  it('parseInitiator: the canonical form is accepted and parses to itself (idempotent, property)', () => {
    fc.assert(
      fc.property(anyInitiator, (raw) => {
        const first = parseInitiator('initiator', raw);
        expect(parseInitiator('initiator', first.name)).to.deep.equal(first);
        expect(first.name).to.equal(first.name.trim());
      }),
      FAST,
    );
  });

  it('parseInitiator: every spelling of one WWPN (case, colons) gives the same canonical name (property)', () => {
    fc.assert(
      fc.property(hex(16), (h) => {
        const lower = h.toLowerCase();
        const expected = lower.match(/../g)!.join(':');
        for (const spelling of [h, h.toUpperCase(), lower.match(/../g)!.join(':'), h.toUpperCase().match(/../g)!.join(':')]) {
          expect(parseInitiator('initiator', spelling)).to.deep.equal({ name: expected, kind: 'fcp' });
        }
      }),
      FAST,
    );
  });

  it('parseInitiator refuses any string that is no IQN, EUI or WWPN, naming the field (property)', () => {
    // The oracle knows only the shapes, not rules.ts's regular expressions.
    const looksValid = (s: string): boolean => {
      const l = s.trim().toLowerCase();
      if (l.length === 0 || l.length > 223) return false;
      if (l.startsWith('eui.')) return /^[0-9a-f]{16}$/.test(l.slice(4));
      if (l.startsWith('iqn.')) {
        const [head, ...rest] = l.split(':');
        const parts = head!.split('.');
        const date = parts[1] ?? '';
        const month = Number(date.slice(5));
        const domain = parts.slice(2);
        const okDate = /^\d{4}-\d\d$/.test(date) && month >= 1 && month <= 12;
        const okDomain = domain.length > 0 && domain.every((p) => /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(p));
        const suffix = rest.join(':');
        const okSuffix = rest.length === 0 || /^[a-z0-9.:_-]+$/.test(suffix);
        return okDate && okDomain && okSuffix;
      }
      const hexOnly = l.replace(/:/g, '');
      const colonForm = l.includes(':') ? l.split(':').every((p) => p.length === 2) && l.split(':').length === 8 : true;
      return /^[0-9a-f]{16}$/.test(hexOnly) && colonForm;
    };
    const noise = fc.oneof(
      fc.string({ unit: fc.constantFrom(...'iqneu.0123456789abcdefg:-_ ZX'), maxLength: 40 }),
      anyInitiator.chain((s) => fc.tuple(fc.nat({ max: s.length }), fc.constantFrom(' ', '/', '#', 'é', '-', ':', '.', '')).map(([at, c]) => s.slice(0, at) + c + s.slice(at + 1))),
      fc.string({ maxLength: 30 }),
    );
    fc.assert(
      fc.property(noise, (s) => {
        if (looksValid(s)) {
          expect(() => parseInitiator('initiators', s), s).not.to.throw();
        } else {
          expect(invalid(() => parseInitiator('initiators', s)).field, s).to.equal('initiators');
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('storage rules: names checked against independent oracles (property)', () => {
  const chars = fc.constantFrom(...'aZ_09.-:/ é\n'.split(''), 'x');
  it('checkIgroupName accepts exactly 1-96 of [A-Za-z0-9_.:-] not starting with . : -, else names the field', () => {
    const oracle = (s: string): boolean =>
      s.length >= 1 && s.length <= 96 && [...s].every((c) => /[A-Za-z0-9_.:-]/.test(c)) && !'.:-'.includes(s[0]!);
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: chars, maxLength: 100 }), fc.string({ unit: chars, minLength: 90, maxLength: 100 })), (s) => {
        if (oracle(s)) expect(checkIgroupName('igroup', s)).to.equal(s);
        else expect(invalid(() => checkIgroupName('igroup', s)).field).to.equal('igroup');
      }),
      { numRuns: 500 },
    );
  });

  it('parseLunPath accepts exactly /vol/<volume>/<name> with ONTAP volume and LUN name rules, else names the field', () => {
    const okVolume = (v: string): boolean => v.length >= 1 && v.length <= 203 && /^[A-Za-z_]/.test(v) && [...v].every((c) => /[A-Za-z0-9_]/.test(c));
    const okName = (n: string): boolean => n.length >= 1 && n.length <= 255 && !'.-'.includes(n[0]!) && [...n].every((c) => /[A-Za-z0-9_.-]/.test(c));
    const part = fc.string({ unit: chars, maxLength: 12 });
    fc.assert(
      fc.property(part, part, fc.constantFrom('/vol/', 'vol/', '/vol', '/Vol/'), (volume, name, root) => {
        // The parts may hold slashes themselves, so the oracle splits the path it was given.
        const path = `${root}${volume}/${name}`;
        const parts = path.startsWith('/vol/') ? path.slice(5).split('/') : [];
        const valid = parts.length === 2 && okVolume(parts[0]!) && okName(parts[1]!);
        if (valid) expect(parseLunPath('path', path)).to.deep.equal({ path, volume: parts[0], name: parts[1] });
        else expect(invalid(() => parseLunPath('path', path)).field, path).to.equal('path');
      }),
      { numRuns: 500 },
    );
  });
});

describe('storage rules: reservation keys', () => {
  const ok: [string, boolean, string][] = [
    ['1', false, '0000000000000001'],
    ['0x1A2B3C4D', false, '000000001a2b3c4d'],
    ['  ABCDEF0123456789 ', false, 'abcdef0123456789'],
    ['0', true, '0000000000000000'],
    ['0x0', true, '0000000000000000'],
  ];
  for (const [raw, allowZero, key] of ok) {
    it(`parseReservationKey reads ${JSON.stringify(raw)}${allowZero ? ' (zero allowed)' : ''} as ${key}`, () => {
      expect(parseReservationKey('key', raw, allowZero)).to.equal(key);
    });
  }
  for (const raw of ['', '0x', 'g', '12345678901234567', '0x12345678901234567', '-1', '1 2']) {
    it(`parseReservationKey refuses ${JSON.stringify(raw)} as not a key`, () => {
      const err = invalid(() => parseReservationKey('preempt_key', raw, true));
      expect(err.field).to.equal('preempt_key');
      expect(err.message).to.match(/not a reservation key/);
    });
  }
  it('parseReservationKey refuses the null key where zero is not allowed', () => {
    for (const raw of ['0', '0x0', '0000000000000000']) {
      expect(invalid(() => parseReservationKey('key', raw, false)).message).to.match(/must not be zero/);
    }
  });
  it('parseReservationKey: the canonical key parses to itself (property)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 1n, max: 2n ** 64n - 1n }), fc.boolean(), (n, prefix) => {
        const key = parseReservationKey('key', `${prefix ? '0x' : ''}${n.toString(16)}`, false);
        expect(key).to.have.length(16);
        expect(BigInt(`0x${key}`)).to.equal(n);
        expect(parseReservationKey('key', key, false)).to.equal(key);
      }),
      FAST,
    );
  });
});

describe('storage rules: block I/O ranges', () => {
  const lun = 8 * MiB;
  it('checkIo accepts aligned ranges inside the LUN up to 1 MiB and returns the offset', () => {
    expect(checkIo('length_bytes', 0n, 512, lun)).to.equal(0);
    expect(checkIo('length_bytes', BigInt(lun - MAX_IO_BYTES), MAX_IO_BYTES, lun)).to.equal(lun - MAX_IO_BYTES);
    expect(checkIo('length_bytes', BigInt(lun - 512), 512, lun)).to.equal(lun - 512);
  });
  const bad: [string, bigint, number, string, RegExp][] = [
    ['an unaligned offset', 100n, 512, 'offset_bytes', /multiple of 512/],
    ['a zero length', 0n, 0, 'length_bytes', /positive multiple/],
    ['an unaligned length', 0n, 1000, 'length_bytes', /positive multiple/],
    ['more than 1 MiB', 0n, MAX_IO_BYTES + 512, 'length_bytes', /1 MiB/],
    ['a range ending past the LUN', BigInt(lun - 512), 1024, 'offset_bytes', /past the LUN/],
    ['an offset past the LUN', BigInt(lun), 512, 'offset_bytes', /past the LUN/],
    ['an offset of 2^63', 2n ** 63n, 512, 'offset_bytes', /past the LUN/],
    ['a negative offset', -512n, 512, 'offset_bytes', /offset_bytes/],
    ['a negative length', 0n, -512, 'length_bytes', /positive multiple/],
  ];
  for (const [what, offset, length, field, message] of bad) {
    it(`checkIo refuses ${what} on field ${field}`, () => {
      const err = invalid(() => checkIo('length_bytes', offset, length, lun));
      expect(err.field).to.equal(field);
      expect(err.message).to.match(message);
    });
  }
});

describe('storage rules: paging', () => {
  it('checkPage: page_size 0 means the default, up to 1000 is taken as given', () => {
    expect(checkPage(0, '')).to.deep.equal({ size: DEFAULT_PAGE_SIZE, after: undefined });
    expect(checkPage(1000, '')).to.deep.equal({ size: 1000, after: undefined });
    expect(checkPage(7, '').size).to.equal(7);
  });
  it('checkPage refuses page_size 1001 and negative or fractional sizes', () => {
    for (const n of [1001, -1, 2.5]) expect(invalid(() => checkPage(n, '')).field).to.equal('page_size');
  });
  it('checkPage refuses page tokens the server never gave out', () => {
    const forged = [
      'garbage!!',
      'abc',
      Buffer.from('{"b":"x"}').toString('base64url'),
      Buffer.from('{"a":5}').toString('base64url'),
      Buffer.from('null').toString('base64url'),
    ];
    for (const t of forged) {
      const err = invalid(() => checkPage(10, t));
      expect(err.field).to.equal('page_token');
      expect(err.message).to.match(/next_page_token/);
    }
  });
  it('pageToken round-trips any key through checkPage (property)', () => {
    fc.assert(
      fc.property(fc.string(), (key) => {
        expect(checkPage(5, pageToken(key))).to.deep.equal({ size: 5, after: key });
      }),
      FAST,
    );
  });
});

describe('sizes: parseSize and formatSize', () => {
  const parsed: [string, number][] = [
    ['4096', 4096],
    ['0', 0],
    ['1B', 1],
    ['1K', 1024],
    ['1KiB', 1024],
    ['512MiB', 512 * MiB],
    ['512 mib', 512 * MiB],
    [' 10 GiB ', 10 * GiB],
    ['10G', 10 * GiB],
    ['1.5TiB', 1.5 * TiB],
    ['100GB', 100e9],
    ['1kB', 1000],
    ['2MB', 2e6],
    ['1PB', 1e15],
    ['7PiB', 7 * 1024 ** 5],
  ];
  for (const [text, bytes] of parsed) {
    it(`parseSize reads ${JSON.stringify(text)} as ${bytes} bytes`, () => {
      expect(parseSize(text)).to.equal(bytes);
    });
  }
  const refused: [string, RegExp][] = [
    ['', /is not a size/],
    ['abc', /is not a size/],
    ['10XB', /is not a size/],
    ['1iB', /is not a size/],
    ['-1', /is not a size/],
    ['1e3', /is not a size/],
    ['10 G B', /is not a size/],
    ['1.5', /whole number of bytes/],
    ['0.1B', /whole number of bytes/],
    ['8PiB', /whole number of bytes/],
  ];
  for (const [text, message] of refused) {
    it(`parseSize refuses ${JSON.stringify(text)} as INVALID_ARGUMENT on the given field`, () => {
      const err = invalid(() => parseSize(text, 'size_bytes'));
      expect(err.field).to.equal('size_bytes');
      expect(err.message).to.match(message);
    });
  }

  const formatted: [number, string][] = [
    [0, '0 B'],
    [100, '100 B'],
    [1023, '1023 B'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [4608, '4.5 KiB'],
    [MiB, '1 MiB'],
    [10 * GiB, '10 GiB'],
    [1.25 * GiB, '1.25 GiB'],
    [12.5 * TiB, '12.5 TiB'],
    [1024 ** 5, '1 PiB'],
    [2048 * 1024 ** 5, '2048 PiB'],
  ];
  for (const [bytes, text] of formatted) {
    it(`formatSize writes ${bytes} bytes as ${JSON.stringify(text)}`, () => {
      expect(formatSize(bytes)).to.equal(text);
    });
  }

  it('formatSize output of a whole number of units parses back to the same bytes (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1023 }), fc.integer({ min: 0, max: 4 }), (n, power) => {
        const bytes = n * 1024 ** power;
        expect(parseSize(formatSize(bytes))).to.equal(bytes);
      }),
      FAST,
    );
  });

  it('parseSize of <n><binary unit> is n times the unit, in any case and spacing (property)', () => {
    const units: [string, number][] = [['', 1], ['B', 1], ['K', 1024], ['KiB', 1024], ['M', MiB], ['MiB', MiB], ['G', GiB], ['GiB', GiB], ['TiB', TiB]];
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 4096 }), fc.constantFrom(...units), fc.boolean(), fc.boolean(), (n, [unit, mult], space, upper) => {
        const text = `${n}${space ? ' ' : ''}${upper ? unit.toUpperCase() : unit.toLowerCase()}`;
        expect(parseSize(text)).to.equal(n * mult);
      }),
      FAST,
    );
  });

  it('formatSize stays within 0.5% of the exact value for any size up to 8 PiB (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), (bytes) => {
        const m = /^([\d.]+) (B|KiB|MiB|GiB|TiB|PiB)$/.exec(formatSize(bytes));
        expect(m, formatSize(bytes)).to.not.equal(null);
        const power = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'].indexOf(m![2]!);
        const shown = Number(m![1]) * 1024 ** power;
        expect(Math.abs(shown - bytes) / bytes).to.be.at.most(0.005);
      }),
      FAST,
    );
  });
});
