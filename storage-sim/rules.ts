/**
 * What the array accepts as names, sizes, initiators and keys, and how it writes them down.
 * Every check throws InvalidArgumentError naming the field and saying what would be valid.
 */
import { InvalidArgumentError } from '../common/errors.js';

export const SECTOR = 512;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;
/** The smallest LUN: room for a GPT and a 1 MiB-aligned partition. */
export const MIN_LUN_BYTES = 4 * MiB;
/** The largest LUN, as on an ONTAP (non-ASA) system. */
export const MAX_LUN_BYTES = 16 * TiB;
export const MAX_IO_BYTES = MiB;
/** Thin LUNs take pool space in extents of this size as they are written. */
export const EXTENT_BYTES = MiB;
export const MAX_LUN_ID = 4095;
export const MAX_COMMENT_CHARS = 254;
export const MAX_REQUEST_ID_CHARS = 128;
export const MAX_INITIATORS_PER_CALL = 256;
export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

// ONTAP's rules: a volume name starts with a letter or underscore and holds letters, digits
// and underscores; a LUN name may also hold dots and hyphens.
const VOLUME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,202}$/;
const LUN_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$/;
const IGROUP_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,95}$/;
const POOL_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const SERIAL_RE = /^[A-Za-z0-9]{12}$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// iqn.YYYY-MM.reversed.domain[:anything printable], RFC 3720 section 3.2.6.3.1.
const IQN_RE = /^iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:_-]+)?$/;
const EUI_RE = /^eui\.[0-9a-f]{16}$/;
const WWPN_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){7}$|^[0-9a-f]{16}$/;
const KEY_RE = /^(0x)?[0-9a-f]{1,16}$/;

export type OsType = 'windows' | 'hyper_v' | 'linux' | 'vmware';
export type IgroupProtocol = 'iscsi' | 'fcp' | 'mixed';
export type InitiatorKind = 'iscsi' | 'fcp';

function printable(s: string): boolean {
  return /^[\x20-\x7e]*$/.test(s);
}

function shown(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}

export function requireText(field: string, value: string, what: string): string {
  if (value.length === 0) throw new InvalidArgumentError(field, `${field} is required: give ${what}`);
  return value;
}

export interface LunPath {
  path: string;
  volume: string;
  name: string;
}

export function parseLunPath(field: string, value: string): LunPath {
  requireText(field, value, 'a LUN path such as /vol/vol1/lun1');
  const m = /^\/vol\/([^/]*)\/([^/]*)$/.exec(value);
  if (!m) {
    throw new InvalidArgumentError(field, `${field} ${shown(value)} is not a LUN path: use /vol/<volume>/<name>, e.g. /vol/vol1/lun1`);
  }
  const [, volume, name] = m as unknown as [string, string, string];
  if (!VOLUME_RE.test(volume)) {
    throw new InvalidArgumentError(
      field,
      `volume name ${shown(volume)} is invalid: 1-203 characters, letters, digits and underscores, starting with a letter or underscore`,
    );
  }
  if (!LUN_NAME_RE.test(name)) {
    throw new InvalidArgumentError(
      field,
      `LUN name ${shown(name)} is invalid: 1-255 characters, letters, digits, underscores, dots and hyphens, not starting with a dot or hyphen`,
    );
  }
  return { path: value, volume, name };
}

export function checkPathPrefix(field: string, value: string): string {
  if (value === '') return value;
  if (!value.startsWith('/vol/') && value !== '/vol' && value !== '/' || !printable(value) || value.length > 470) {
    throw new InvalidArgumentError(field, `${field} ${shown(value)} must be the start of a LUN path, e.g. /vol/vol1/`);
  }
  return value;
}

export function checkIgroupName(field: string, value: string): string {
  requireText(field, value, 'an igroup name');
  if (!IGROUP_RE.test(value)) {
    throw new InvalidArgumentError(
      field,
      `igroup name ${shown(value)} is invalid: 1-96 characters, letters, digits, underscores, dots, colons and hyphens, starting with a letter, digit or underscore`,
    );
  }
  return value;
}

export function checkPoolName(field: string, value: string): string {
  if (!POOL_RE.test(value)) {
    throw new InvalidArgumentError(
      field,
      `pool name ${shown(value)} is invalid: 1-64 characters, letters, digits and underscores, starting with a letter or underscore`,
    );
  }
  return value;
}

export function checkLunSize(field: string, bytes: bigint): number {
  if (bytes === 0n) throw new InvalidArgumentError(field, `${field} is required: give the LUN size in bytes (at least ${MIN_LUN_BYTES})`);
  if (bytes % BigInt(SECTOR) !== 0n) {
    throw new InvalidArgumentError(field, `${field} ${bytes} is not a multiple of ${SECTOR} bytes`);
  }
  if (bytes < BigInt(MIN_LUN_BYTES) || bytes > BigInt(MAX_LUN_BYTES)) {
    throw new InvalidArgumentError(
      field,
      `${field} ${bytes} is out of range: a LUN holds ${MIN_LUN_BYTES} bytes (4 MiB) to ${MAX_LUN_BYTES} bytes (16 TiB)`,
    );
  }
  return Number(bytes);
}

export function checkComment(field: string, value: string): string {
  if (value.length > MAX_COMMENT_CHARS) {
    throw new InvalidArgumentError(field, `${field} is ${value.length} characters long; at most ${MAX_COMMENT_CHARS} are allowed`);
  }
  if (!/^[^\x00-\x1f\x7f]*$/u.test(value)) {
    throw new InvalidArgumentError(field, `${field} must not hold control characters`);
  }
  return value;
}

export function checkRequestId(value: string): string {
  if (value.length > MAX_REQUEST_ID_CHARS || !/^[\x21-\x7e]*$/.test(value)) {
    throw new InvalidArgumentError(
      'request_id',
      `request_id ${shown(value)} is invalid: at most ${MAX_REQUEST_ID_CHARS} printable ASCII characters without spaces`,
    );
  }
  return value;
}

/** Which of the three ways of naming a LUN a reference uses. */
export type LunRefKind = 'path' | 'uuid' | 'serial';

export function classifyLunRef(field: string, value: string): LunRefKind {
  requireText(field, value, 'a LUN path, uuid or serial');
  if (value.startsWith('/')) {
    parseLunPath(field, value);
    return 'path';
  }
  if (UUID_RE.test(value)) return 'uuid';
  if (SERIAL_RE.test(value)) return 'serial';
  throw new InvalidArgumentError(
    field,
    `${field} ${shown(value)} is neither a LUN path (/vol/<volume>/<name>), a uuid nor a 12-character serial`,
  );
}

export interface Initiator {
  name: string;
  kind: InitiatorKind;
}

/**
 * Validates an initiator name and writes it in its canonical form: iSCSI names in lower
 * case (they compare case-insensitively), EUI names with upper-case hex, WWPNs as eight
 * lower-case colon-separated bytes.
 */
export function parseInitiator(field: string, value: string): Initiator {
  requireText(field, value, 'an initiator: an iSCSI IQN or EUI, or an FC WWPN');
  const lower = value.trim().toLowerCase();
  if (lower.length > 223) throw new InvalidArgumentError(field, `initiator ${shown(value)} is longer than 223 characters`);
  if (lower.startsWith('iqn.')) {
    if (!IQN_RE.test(lower)) {
      throw new InvalidArgumentError(
        field,
        `initiator ${shown(value)} is not a valid iSCSI qualified name: use iqn.YYYY-MM.reversed.domain[:name], e.g. iqn.1991-05.com.microsoft:node1`,
      );
    }
    return { name: lower, kind: 'iscsi' };
  }
  if (lower.startsWith('eui.')) {
    if (!EUI_RE.test(lower)) {
      throw new InvalidArgumentError(field, `initiator ${shown(value)} is not a valid EUI-64 name: use eui. followed by 16 hex digits`);
    }
    return { name: `eui.${lower.slice(4).toUpperCase()}`, kind: 'iscsi' };
  }
  if (WWPN_RE.test(lower)) {
    const hex = lower.replace(/:/g, '');
    return { name: hex.match(/../g)!.join(':'), kind: 'fcp' };
  }
  throw new InvalidArgumentError(
    field,
    `initiator ${shown(value)} is neither an iSCSI name (iqn.… or eui.…) nor an FC WWPN (8 bytes of hex, e.g. 20:00:00:25:b5:00:00:01)`,
  );
}

export function initiatorFits(protocol: IgroupProtocol, kind: InitiatorKind): boolean {
  return protocol === 'mixed' || protocol === kind;
}

/** A persistent-reservation key as 16 lower-case hex digits; "0" is the null key. */
export function parseReservationKey(field: string, value: string, allowZero: boolean): string {
  const lower = value.trim().toLowerCase();
  if (!KEY_RE.test(lower)) {
    throw new InvalidArgumentError(field, `${field} ${shown(value)} is not a reservation key: give 1-16 hex digits, e.g. 0x1a2b3c4d`);
  }
  const key = lower.replace(/^0x/, '').padStart(16, '0');
  if (!allowZero && /^0+$/.test(key)) {
    throw new InvalidArgumentError(field, `${field} must not be zero: zero is the null key`);
  }
  return key;
}

export function checkIo(field: string, offset: bigint, length: number, lunSize: number): number {
  // Off the wire both are unsigned; a direct caller may still pass a negative number, which
  // the file layer would reject with a RangeError (an internal error) instead of this message.
  if (offset < 0n || offset % BigInt(SECTOR) !== 0n) {
    throw new InvalidArgumentError('offset_bytes', `offset_bytes ${offset} is not a non-negative multiple of ${SECTOR}`);
  }
  if (!Number.isInteger(length) || length <= 0 || length % SECTOR !== 0) {
    throw new InvalidArgumentError(field, `${field} ${length} must be a positive multiple of ${SECTOR}`);
  }
  if (length > MAX_IO_BYTES) {
    throw new InvalidArgumentError(field, `${field} ${length} is more than ${MAX_IO_BYTES} bytes (1 MiB), the most one call carries`);
  }
  if (offset + BigInt(length) > BigInt(lunSize)) {
    throw new InvalidArgumentError(
      'offset_bytes',
      `the range ${offset}+${length} ends past the LUN's last byte (its size is ${lunSize} bytes)`,
    );
  }
  return Number(offset);
}

export function checkPage(pageSize: number, pageToken: string): { size: number; after: string | undefined } {
  if (!Number.isInteger(pageSize) || pageSize < 0) {
    // A negative size would end a page before its first item, then fail (an internal error)
    // building the next page token from an item it never took.
    throw new InvalidArgumentError('page_size', `page_size ${pageSize} is not a whole number from 0 to ${MAX_PAGE_SIZE}`);
  }
  if (pageSize > MAX_PAGE_SIZE) {
    throw new InvalidArgumentError('page_size', `page_size ${pageSize} is more than ${MAX_PAGE_SIZE}`);
  }
  const size = pageSize === 0 ? DEFAULT_PAGE_SIZE : pageSize;
  if (pageToken === '') return { size, after: undefined };
  let after: unknown;
  try {
    const decoded = JSON.parse(Buffer.from(pageToken, 'base64url').toString('utf8')) as { a?: unknown };
    after = decoded.a;
  } catch {
    after = undefined;
  }
  if (typeof after !== 'string') {
    throw new InvalidArgumentError('page_token', 'page_token is not one this server gave out: pass next_page_token from the previous page');
  }
  return { size, after };
}

export function pageToken(lastKey: string): string {
  return Buffer.from(JSON.stringify({ a: lastKey }), 'utf8').toString('base64url');
}
