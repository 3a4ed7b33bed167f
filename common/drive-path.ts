/**
 * Drive paths: where a guest mounts a pass-through disk. A drive letter (`E:`) or a folder
 * mount point (`C:\mt1`) on a Windows guest, an absolute path on a Linux guest.
 *
 * Shared by the host agent (which keys disks by VM and normalized mount path, and builds
 * names from it) and the guest agent (which mounts there), so both sides agree on what one
 * mount is. The input is untrusted: every check below is a linear scan with no backtracking
 * regular expression, and the input is bounded before anything else looks at it.
 */
import { createHash } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';

export type GuestOsName = 'windows' | 'linux';

export interface DrivePath {
  /** As shown to people, normalized: 'E:', 'C:\\mt1\\data', '/mnt/data'. */
  readonly path: string;
  /** Identity for comparisons: case-folded on Windows (C:\MT1 and c:\mt1 are one mount), same as path on Linux. */
  readonly key: string;
  readonly kind: 'drive-letter' | 'folder' | 'absolute';
}

const FIELD = 'mount_path';

/** Windows counts path lengths in UTF-16 code units, as JavaScript does. */
export const WINDOWS_MAX_PATH = 260;
/** NTFS limit on one name, in UTF-16 code units. */
export const WINDOWS_MAX_SEGMENT = 255;
/** PATH_MAX (4096) less the terminating NUL, in bytes. */
export const LINUX_MAX_PATH_BYTES = 4095;
/** NAME_MAX, in bytes. */
export const LINUX_MAX_SEGMENT_BYTES = 255;
/**
 * Anything longer is refused before it is parsed. Generous enough that no path which
 * normalizes to a valid one is lost in practice (Windows' own ceiling is 32,767), small
 * enough that a hostile request cannot make us split and scan megabytes.
 */
export const MAX_RAW_LENGTH = 32_768;

const WINDOWS_ACCEPTED = 'accepted: a drive letter D: to Z: (e.g. E:) or a folder mount point such as C:\\mt1';
const LINUX_ACCEPTED = 'accepted: an absolute path such as /mnt/data';

/** Characters Windows refuses in a name; '\' and '/' never reach here, they separate names. */
const WINDOWS_FORBIDDEN = new Set(['<', '>', ':', '"', '|', '?', '*']);

/**
 * Device names Win32 resolves before the file system sees them, whatever the folder or
 * extension. The superscript digits and the 0 variants are on Microsoft's list too
 * ("Naming Files, Paths, and Namespaces"), as are the console handles.
 */
const WINDOWS_DEVICES = new Set<string>(['CON', 'PRN', 'AUX', 'NUL', 'CONIN$', 'CONOUT$']);
for (const port of ['COM', 'LPT']) {
  for (const digit of ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '\u00B9', '\u00B2', '\u00B3']) {
    WINDOWS_DEVICES.add(port + digit);
  }
}

/** Pseudo-filesystems a Linux system has mounted from boot: a disk mounted over them would hide the system's own view. */
const LINUX_PSEUDO_ROOTS = new Set(['proc', 'sys', 'dev', 'run']);

export function parseDrivePath(os: GuestOsName, raw: string): DrivePath {
  if (os !== 'windows' && os !== 'linux') {
    throw new InvalidArgumentError('guest_os', `guest OS ${JSON.stringify(String(os))} is not known; accepted: windows or linux`, 'GUEST_OS_UNKNOWN');
  }
  if (typeof raw !== 'string') {
    throw new InvalidArgumentError(FIELD, `mount path must be text, got ${raw === null ? 'null' : typeof raw}`, 'DRIVE_PATH_INVALID');
  }
  const accepted = os === 'windows' ? WINDOWS_ACCEPTED : LINUX_ACCEPTED;
  if (raw.length > MAX_RAW_LENGTH) {
    fail(raw, `is ${raw.length} characters long; at most ${MAX_RAW_LENGTH} are accepted`, 'DRIVE_PATH_TOO_LONG');
  }
  if (raw.length === 0) {
    fail(raw, `is empty; ${accepted}`, 'DRIVE_PATH_INVALID');
  }
  if (raw.trim() === '') {
    fail(raw, `is only whitespace; ${accepted}`, 'DRIVE_PATH_INVALID');
  }
  checkCharacters(raw);
  if (/^\s/.test(raw)) {
    fail(raw, `starts with whitespace; remove it (${accepted})`, 'DRIVE_PATH_INVALID');
  }
  return os === 'windows' ? parseWindows(raw) : parseLinux(raw);
}

/** Is `inner` strictly inside `outer` (a folder mount point on a volume, or a Linux path under another)? Compares keys. */
export function isInside(inner: DrivePath, outer: DrivePath): boolean {
  const innerLinux = inner.kind === 'absolute';
  if (innerLinux !== (outer.kind === 'absolute')) return false;
  const prefix = outer.key + (innerLinux ? '/' : '\\');
  return inner.key.length > prefix.length && inner.key.startsWith(prefix);
}

/** For a Windows folder mount point, the drive it sits on ('C:' or 'E:' as a DrivePath); undefined for drive letters and Linux paths. */
export function volumeOf(p: DrivePath): DrivePath | undefined {
  if (p.kind !== 'folder') return undefined;
  // Built directly rather than parsed: C: is refused as a mount path but is a volume.
  const drive = p.path.slice(0, 2).toUpperCase();
  return Object.freeze({ path: drive, key: drive, kind: 'drive-letter' as const });
}

/** The patent-style name part: 'C:\\mt1' -> 'C mt1', 'E:' -> 'E', '/mnt/data' -> 'mnt data' (separators and ':' become single spaces, trimmed). Used in "Disk VM <vm> MP <part>". */
export function namePart(p: DrivePath): string {
  // Spaces next to a separator are trimmed with it, so 'C:\ a' reads 'C a'; spaces inside a name stay.
  return p.path
    .split(/[\\/:]/)
    .map((piece) => piece.trim())
    .filter((piece) => piece !== '')
    .join(' ');
}

const SAFE_TOKEN_MAX = 64;
const HASH_CHARS = 8;

/**
 * Safe for array LUN names and file names: [A-Za-z0-9_] only, e.g. 'C_mt1', 'mnt_data'
 * (other characters become '_', runs collapsed, at most 64 chars).
 *
 * When that mapping loses information ('C:\my data' and 'C:\my_data' would both read
 * 'C_my_data'; '/数据' would read ''; long paths sharing 64 characters would meet) a short
 * hash of the path is appended, so distinct paths keep distinct tokens and none is empty.
 */
export function safeToken(p: DrivePath): string {
  let token = '';
  for (const ch of p.path) {
    const safe = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
    if (safe) token += ch;
    else if (token !== '' && !token.endsWith('_')) token += '_';
  }
  if (token.endsWith('_')) token = token.slice(0, -1);
  // Only these shapes map one-to-one: letters and digits between single separators.
  const lossless = p.kind === 'absolute' ? /^(?:\/[A-Za-z0-9]+)+$/.test(p.path) : /^[A-Z]:(?:\\[A-Za-z0-9]+)*$/.test(p.path);
  if (lossless && token.length <= SAFE_TOKEN_MAX) return token;
  const hash = createHash('sha256').update(p.path).digest('hex').slice(0, HASH_CHARS);
  const room = SAFE_TOKEN_MAX - HASH_CHARS - 1;
  let head = token.slice(0, room);
  if (head.endsWith('_')) head = head.slice(0, -1);
  return head === '' ? `p_${hash}` : `${head}_${hash}`;
}

function parseWindows(raw: string): DrivePath {
  const isSep = (ch: string | undefined) => ch === '\\' || ch === '/';
  if (isSep(raw[0]) && isSep(raw[1])) {
    if ((raw[2] === '?' || raw[2] === '.') && isSep(raw[3])) {
      fail(raw, `uses a \\\\?\\ or \\\\.\\ device prefix; write the plain form, e.g. E: or C:\\mt1`, 'DRIVE_PATH_INVALID');
    }
    fail(raw, `is a UNC network path; a mount point must be on a local volume (${WINDOWS_ACCEPTED})`, 'DRIVE_PATH_INVALID');
  }
  if (isSep(raw[0])) {
    fail(raw, `has no drive letter; ${WINDOWS_ACCEPTED}`, 'DRIVE_PATH_INVALID');
  }
  // Tested on the character as typed: 'ſ'.toUpperCase() is 'S', and 'ſ:' is no drive.
  const first = raw[0]!;
  const ascii = (first >= 'A' && first <= 'Z') || (first >= 'a' && first <= 'z');
  const letter = first.toUpperCase();
  if (raw[1] !== ':' || !ascii) {
    fail(raw, `is not a drive letter or an absolute folder path; ${WINDOWS_ACCEPTED}`, 'DRIVE_PATH_INVALID');
  }
  const rest = raw.slice(2);
  if (rest !== '' && !isSep(rest[0])) {
    if (rest.trim() === '') {
      fail(raw, `ends with whitespace after the drive letter; write ${letter}:`, 'DRIVE_PATH_INVALID');
    }
    fail(raw, `is relative to the current folder of drive ${letter}:; write ${quote(`${letter}:\\${rest}`)}`, 'DRIVE_PATH_INVALID');
  }
  if (letter === 'A' || letter === 'B') {
    fail(raw, `is on drive ${letter}:, which Windows reserves for floppy drives; use a letter D: to Z:, or a folder on C: such as C:\\mt1`, 'DRIVE_LETTER_RESERVED');
  }
  const segments = rest.split(/[\\/]+/).filter((s) => s !== '');
  if (segments.length === 0) {
    if (letter === 'C') {
      fail(raw, `is the boot volume C:, which always exists; use a letter D: to Z: or a folder such as C:\\mt1`, 'DRIVE_LETTER_RESERVED');
    }
    const path = `${letter}:`;
    return Object.freeze({ path, key: path, kind: 'drive-letter' as const });
  }
  for (const segment of segments) checkWindowsSegment(raw, segment);
  const path = `${letter}:\\${segments.join('\\')}`;
  if (path.length > WINDOWS_MAX_PATH) {
    fail(raw, `is ${path.length} characters long once normalized; at most ${WINDOWS_MAX_PATH} are accepted`, 'DRIVE_PATH_TOO_LONG');
  }
  return Object.freeze({ path, key: foldCase(path), kind: 'folder' as const });
}

function checkWindowsSegment(raw: string, segment: string): void {
  if (segment === '.' || segment === '..') {
    fail(raw, `contains "${segment}"; write the folder path without . or .. (e.g. C:\\mt1\\data)`, 'DRIVE_PATH_INVALID');
  }
  for (const ch of segment) {
    if (WINDOWS_FORBIDDEN.has(ch)) {
      fail(raw, `contains "${ch}", which Windows forbids in folder names (< > : " | ? * and control characters)`, 'DRIVE_PATH_INVALID');
    }
  }
  if (segment.length > WINDOWS_MAX_SEGMENT) {
    fail(raw, `has a folder name of ${segment.length} characters; at most ${WINDOWS_MAX_SEGMENT} are accepted`, 'DRIVE_PATH_TOO_LONG');
  }
  const device = deviceName(segment);
  if (device !== undefined) {
    fail(raw, `contains ${quote(segment)}, which Windows reserves for the device ${device}; choose another folder name`, 'DRIVE_PATH_RESERVED_NAME');
  }
  const last = segment[segment.length - 1];
  if (last === ' ' || last === '.') {
    fail(
      raw,
      `has folder name ${quote(segment)} ending with ${last === ' ' ? 'a space' : 'a dot'}, which Windows silently drops, so the folder would get another name; remove the trailing ${last === ' ' ? 'space' : 'dot'}`,
      'DRIVE_PATH_INVALID',
    );
  }
}

/** The device a name resolves to: the part before the first dot, with spaces before that dot ignored ('nul .txt' is NUL). */
function deviceName(segment: string): string | undefined {
  const dot = segment.indexOf('.');
  let end = dot === -1 ? segment.length : dot;
  // A loop, not / +$/: that regular expression is quadratic on long runs of spaces.
  while (end > 0 && segment[end - 1] === ' ') end--;
  if (end < 3 || end > 7) return undefined;
  const base = segment.slice(0, end).toUpperCase();
  return WINDOWS_DEVICES.has(base) ? base : undefined;
}

function parseLinux(raw: string): DrivePath {
  if (raw[0] !== '/') {
    fail(raw, `is not an absolute path; ${LINUX_ACCEPTED}`, 'DRIVE_PATH_INVALID');
  }
  const segments = raw.split('/').filter((s) => s !== '');
  for (const segment of segments) {
    if (segment === '.' || segment === '..') {
      fail(raw, `contains "${segment}"; write the path without . or .. (e.g. /mnt/data)`, 'DRIVE_PATH_INVALID');
    }
    const bytes = Buffer.byteLength(segment, 'utf8');
    if (bytes > LINUX_MAX_SEGMENT_BYTES) {
      fail(raw, `has a name of ${bytes} bytes (UTF-8); at most ${LINUX_MAX_SEGMENT_BYTES} are accepted`, 'DRIVE_PATH_TOO_LONG');
    }
  }
  if (segments.length === 0) {
    fail(raw, `is the root file system, which always exists; ${LINUX_ACCEPTED}`, 'DRIVE_PATH_RESERVED_NAME');
  }
  const top = segments[0]!;
  if (LINUX_PSEUDO_ROOTS.has(top)) {
    fail(raw, `is ${segments.length === 1 ? '' : 'under '}/${top}, a pseudo-filesystem the system always has mounted; ${LINUX_ACCEPTED}`, 'DRIVE_PATH_RESERVED_NAME');
  }
  const path = `/${segments.join('/')}`;
  const bytes = Buffer.byteLength(path, 'utf8');
  if (bytes > LINUX_MAX_PATH_BYTES) {
    fail(raw, `is ${bytes} bytes (UTF-8) once normalized; at most ${LINUX_MAX_PATH_BYTES} are accepted`, 'DRIVE_PATH_TOO_LONG');
  }
  return Object.freeze({ path, key: path, kind: 'absolute' as const });
}

/**
 * Refuses control characters (C0, DEL and C1: they never belong in a name people read) and
 * unpaired surrogates (not Unicode: they cannot cross the wire as UTF-8 unchanged, so the
 * host and the guest would disagree on the path).
 */
function checkCharacters(raw: string): void {
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) {
      fail(raw, `contains control character ${codePoint(c)} at position ${i}; control characters are never accepted`, 'DRIVE_PATH_INVALID');
    }
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = raw.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      fail(raw, `contains an unpaired surrogate ${codePoint(c)} at position ${i}; it is not valid Unicode`, 'DRIVE_PATH_INVALID');
    }
  }
}

/**
 * Upper-cases one code point at a time, keeping those whose upper case is longer ('ß' is
 * not 'SS' to NTFS, which compares names through a one-to-one upcase table).
 */
function foldCase(path: string): string {
  let out = '';
  for (const ch of path) {
    const upper = ch.toUpperCase();
    out += upper.length === ch.length ? upper : ch;
  }
  return out;
}

const QUOTE_LIMIT = 120;

/**
 * The input as a person can read it in a message: Windows backslashes as typed (JSON would
 * double them), control characters and stray surrogates escaped, long input cut short.
 */
function quote(raw: string): string {
  let out = '';
  let i = 0;
  // Bounded by what is written, not what is read: an escaped control character takes six.
  for (; i < raw.length && out.length < QUOTE_LIMIT; i++) {
    const c = raw.charCodeAt(i);
    const next = raw.charCodeAt(i + 1);
    if (c >= 0xd800 && c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      out += raw[i]! + raw[i + 1]!;
      i++;
    } else if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || (c >= 0xd800 && c <= 0xdfff)) {
      out += `\\u${c.toString(16).toUpperCase().padStart(4, '0')}`;
    } else {
      out += raw[i]!;
    }
  }
  return i < raw.length ? `"${out}…" (${raw.length} characters)` : `"${out}"`;
}

function codePoint(c: number): string {
  return `U+${c.toString(16).toUpperCase().padStart(4, '0')}`;
}

function fail(raw: string, problem: string, reason: string): never {
  throw new InvalidArgumentError(FIELD, `mount path ${quote(raw)} ${problem}`, reason);
}
