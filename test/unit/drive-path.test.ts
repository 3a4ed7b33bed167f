/**
 * Drive paths (common/drive-path.ts): which mount paths a guest may ask for, the one
 * normalized form each has, and the names built from it. Input is hostile: every refusal
 * must be an InvalidArgumentError naming the input, and no input may crash or stall the parser.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { InvalidArgumentError } from '../../common/errors.js';
import { isInside, namePart, parseDrivePath, safeToken, volumeOf, type DrivePath, type GuestOsName } from '../../common/drive-path.js';

type Reason = 'DRIVE_PATH_INVALID' | 'DRIVE_LETTER_RESERVED' | 'DRIVE_PATH_RESERVED_NAME' | 'DRIVE_PATH_TOO_LONG';
const REASONS: readonly string[] = ['DRIVE_PATH_INVALID', 'DRIVE_LETTER_RESERVED', 'DRIVE_PATH_RESERVED_NAME', 'DRIVE_PATH_TOO_LONG'];

interface Accepted {
  name: string;
  os: GuestOsName;
  input: string;
  expected: DrivePath;
}

interface Refused {
  name: string;
  os: GuestOsName;
  input: string;
  reason: Reason;
  /** How the message shows the input when it is not verbatim (escaped or cut short). */
  shown?: string;
}

const drive = (path: string): DrivePath => ({ path, key: path, kind: 'drive-letter' });
const folder = (path: string, key: string): DrivePath => ({ path, key, kind: 'folder' });
const abs = (path: string): DrivePath => ({ path, key: path, kind: 'absolute' });
const W: GuestOsName = 'windows';
const L: GuestOsName = 'linux';

const a = (n: number) => 'a'.repeat(n);

const ACCEPTED: Accepted[] = [
  // Windows drive letters
  { name: 'a drive letter is kept as is', os: W, input: 'E:', expected: drive('E:') },
  { name: 'a lower-case drive letter is upper-cased', os: W, input: 'e:', expected: drive('E:') },
  { name: 'D: is the first letter accepted', os: W, input: 'd:', expected: drive('D:') },
  { name: 'Z: is the last letter accepted', os: W, input: 'Z:', expected: drive('Z:') },
  { name: 'one trailing backslash after a drive letter is dropped', os: W, input: 'E:\\', expected: drive('E:') },
  { name: 'a trailing forward slash after a drive letter is dropped', os: W, input: 'e:/', expected: drive('E:') },
  { name: 'repeated trailing separators after a drive letter collapse like any others', os: W, input: 'E:\\\\/', expected: drive('E:') },
  // Windows folder mount points
  { name: 'a folder on C: keeps its case and gets an upper-case key', os: W, input: 'C:\\mt1', expected: folder('C:\\mt1', 'C:\\MT1') },
  { name: 'a folder path with a lower-case drive upper-cases the drive only', os: W, input: 'c:\\MT1', expected: folder('C:\\MT1', 'C:\\MT1') },
  { name: 'forward slashes become backslashes', os: W, input: 'C:/mt1/data', expected: folder('C:\\mt1\\data', 'C:\\MT1\\DATA') },
  { name: 'mixed and repeated separators collapse to one backslash', os: W, input: 'C:\\\\mt1/\\//data', expected: folder('C:\\mt1\\data', 'C:\\MT1\\DATA') },
  { name: 'a trailing separator after a folder is removed', os: W, input: 'C:\\mt1\\', expected: folder('C:\\mt1', 'C:\\MT1') },
  { name: 'a folder may sit on a letter other than C:', os: W, input: 'e:\\Data', expected: folder('E:\\Data', 'E:\\DATA') },
  { name: 'a dot inside a folder name is fine', os: W, input: 'C:\\mount.d', expected: folder('C:\\mount.d', 'C:\\MOUNT.D') },
  { name: 'a folder name may start with a dot', os: W, input: 'C:\\.hidden', expected: folder('C:\\.hidden', 'C:\\.HIDDEN') },
  { name: 'a folder name may start with a space', os: W, input: 'C:\\ lead', expected: folder('C:\\ lead', 'C:\\ LEAD') },
  { name: 'a folder name may contain spaces', os: W, input: 'C:\\my data', expected: folder('C:\\my data', 'C:\\MY DATA') },
  { name: 'names that only resemble devices are not reserved (con1)', os: W, input: 'C:\\con1', expected: folder('C:\\con1', 'C:\\CON1') },
  { name: 'names that only resemble devices are not reserved (nullable)', os: W, input: 'C:\\nullable', expected: folder('C:\\nullable', 'C:\\NULLABLE') },
  { name: 'names that only resemble devices are not reserved (COM10, LPT)', os: W, input: 'C:\\COM10\\LPT', expected: folder('C:\\COM10\\LPT', 'C:\\COM10\\LPT') },
  { name: 'a device name inside a longer name is not reserved (my con)', os: W, input: 'C:\\my con', expected: folder('C:\\my con', 'C:\\MY CON') },
  { name: 'accented letters are case-folded in the key', os: W, input: 'C:\\données', expected: folder('C:\\données', 'C:\\DONNÉES') },
  { name: 'ß stays ß in the key, as NTFS has no one-letter upper case for it', os: W, input: 'C:\\Straße', expected: folder('C:\\Straße', 'C:\\STRAßE') },
  { name: 'CJK folder names are accepted', os: W, input: 'C:\\数据', expected: folder('C:\\数据', 'C:\\数据') },
  { name: 'characters outside the BMP are accepted', os: W, input: 'C:\\disk😀', expected: folder('C:\\disk😀', 'C:\\DISK😀') },
  { name: 'a folder name of 255 characters is accepted', os: W, input: `C:\\${a(255)}`, expected: folder(`C:\\${a(255)}`, `C:\\${'A'.repeat(255)}`) },
  {
    name: 'a folder path of exactly 260 characters is accepted',
    os: W,
    input: `C:\\${a(255)}\\b`,
    expected: folder(`C:\\${a(255)}\\b`, `C:\\${'A'.repeat(255)}\\B`),
  },
  {
    name: 'the 260-character limit applies after normalization, not to the input',
    os: W,
    input: `C:${'\\'.repeat(500)}mt1${'/'.repeat(500)}`,
    expected: folder('C:\\mt1', 'C:\\MT1'),
  },
  // Linux
  { name: 'an absolute Linux path is kept as is', os: L, input: '/mnt/data', expected: abs('/mnt/data') },
  { name: 'repeated slashes collapse and a trailing slash is removed', os: L, input: '//mnt///data//', expected: abs('/mnt/data') },
  { name: 'Linux paths keep their case in the key', os: L, input: '/Mnt/Data', expected: abs('/Mnt/Data') },
  { name: 'a backslash is an ordinary character on Linux', os: L, input: '/mnt/a\\b', expected: abs('/mnt/a\\b') },
  { name: 'a colon is an ordinary character on Linux', os: L, input: '/mnt/a:b', expected: abs('/mnt/a:b') },
  { name: 'a trailing space is part of a Linux name', os: L, input: '/mnt/data ', expected: abs('/mnt/data ') },
  { name: 'a name of three dots is an ordinary Linux name', os: L, input: '/mnt/...', expected: abs('/mnt/...') },
  { name: 'Windows device names mean nothing on Linux', os: L, input: '/mnt/con', expected: abs('/mnt/con') },
  { name: 'a name that starts like a pseudo-filesystem is not one (/procfs)', os: L, input: '/procfs', expected: abs('/procfs') },
  { name: 'a pseudo-filesystem name below the top is fine (/mnt/proc)', os: L, input: '/mnt/proc', expected: abs('/mnt/proc') },
  { name: 'pseudo-filesystem roots are case-sensitive (/Proc)', os: L, input: '/Proc', expected: abs('/Proc') },
  { name: 'Unicode names are accepted on Linux', os: L, input: '/mnt/données/数据', expected: abs('/mnt/données/数据') },
  { name: 'a name of 255 bytes is accepted', os: L, input: `/${a(255)}`, expected: abs(`/${a(255)}`) },
  { name: 'a name of 127 two-byte characters (254 bytes) is accepted', os: L, input: `/${'é'.repeat(127)}`, expected: abs(`/${'é'.repeat(127)}`) },
  {
    name: 'a path of exactly 4095 bytes is accepted',
    os: L,
    input: `${`/${a(255)}`.repeat(15)}/${a(254)}`,
    expected: abs(`${`/${a(255)}`.repeat(15)}/${a(254)}`),
  },
];

const REFUSED: Refused[] = [
  // Both
  { name: 'an empty Windows path is refused', os: W, input: '', reason: 'DRIVE_PATH_INVALID', shown: '""' },
  { name: 'a whitespace-only Windows path is refused', os: W, input: '   ', reason: 'DRIVE_PATH_INVALID' },
  { name: 'an empty Linux path is refused', os: L, input: '', reason: 'DRIVE_PATH_INVALID', shown: '""' },
  { name: 'a whitespace-only Linux path is refused', os: L, input: ' \t ', reason: 'DRIVE_PATH_INVALID', shown: ' \\u0009 ' },
  // Windows: drive letters
  { name: 'A: is refused as reserved for floppies', os: W, input: 'A:', reason: 'DRIVE_LETTER_RESERVED' },
  { name: 'b: is refused as reserved for floppies', os: W, input: 'b:', reason: 'DRIVE_LETTER_RESERVED' },
  { name: 'a folder on A: is refused too', os: W, input: 'A:\\mt1', reason: 'DRIVE_LETTER_RESERVED' },
  { name: 'C: is refused as the boot volume', os: W, input: 'C:', reason: 'DRIVE_LETTER_RESERVED' },
  { name: 'c:\\ is refused as the boot volume', os: W, input: 'c:\\', reason: 'DRIVE_LETTER_RESERVED' },
  { name: 'C: with repeated separators is still the boot volume', os: W, input: 'C://\\', reason: 'DRIVE_LETTER_RESERVED' },
  { name: 'a letter without a colon is refused', os: W, input: 'E', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a digit is not a drive letter', os: W, input: '1:', reason: 'DRIVE_PATH_INVALID' },
  { name: 'two letters are not a drive letter', os: W, input: 'EE:', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a non-ASCII letter whose upper case is ASCII is not a drive letter (ſ:)', os: W, input: 'ſ:', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a fullwidth letter is not a drive letter', os: W, input: 'Ｅ:', reason: 'DRIVE_PATH_INVALID' },
  { name: 'leading whitespace is refused', os: W, input: ' E:', reason: 'DRIVE_PATH_INVALID' },
  { name: 'trailing whitespace after a drive letter is refused', os: W, input: 'E: ', reason: 'DRIVE_PATH_INVALID' },
  // Windows: not absolute, or not local
  { name: 'a relative folder is refused', os: W, input: 'mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a relative path with separators is refused', os: W, input: 'mt1\\data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a path starting with .\\ is refused', os: W, input: '.\\mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a drive-relative path (E:mt1) is refused', os: W, input: 'E:mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a root-relative path without a drive is refused', os: W, input: '\\mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a Linux-style path is refused on Windows', os: W, input: '/mnt/data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a UNC path is refused', os: W, input: '\\\\server\\share', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a UNC path with forward slashes is refused', os: W, input: '//server/share', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a \\\\?\\ long-path prefix is refused', os: W, input: '\\\\?\\C:\\mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a \\\\.\\ device prefix is refused', os: W, input: '\\\\.\\PhysicalDrive0', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a //?/ prefix is refused', os: W, input: '//?/C:/mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a \\??\\ NT prefix is refused', os: W, input: '\\??\\C:\\mt1', reason: 'DRIVE_PATH_INVALID' },
  // Windows: . and ..
  { name: 'a . segment is refused', os: W, input: 'C:\\mt1\\.\\data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a trailing . segment is refused', os: W, input: 'C:\\.', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a .. segment is refused', os: W, input: 'C:\\mt1\\..', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a .. that would climb above the root is refused', os: W, input: 'E:\\..\\..\\x', reason: 'DRIVE_PATH_INVALID' },
  // Windows: forbidden characters
  ...['<', '>', ':', '"', '|', '?', '*'].map(
    (ch): Refused => ({ name: `the character ${ch} is refused in a Windows folder name`, os: W, input: `C:\\a${ch}b`, reason: 'DRIVE_PATH_INVALID' }),
  ),
  { name: 'an alternate data stream suffix is refused', os: W, input: 'C:\\mt1::$DATA', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a wildcard as a whole name is refused', os: W, input: 'E:\\*', reason: 'DRIVE_PATH_INVALID' },
  { name: 'NUL is refused on Windows', os: W, input: 'C:\\a\u0000b', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\u0000b' },
  { name: 'a control character (U+001F) is refused on Windows', os: W, input: 'C:\\a\u001fb', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\u001Fb' },
  { name: 'a tab inside a name is refused on Windows', os: W, input: 'C:\\a\tb', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\u0009b' },
  { name: 'DEL is refused on Windows', os: W, input: 'C:\\a\u007f', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\u007F' },
  { name: 'a C1 control (U+0085) is refused on Windows', os: W, input: 'C:\\a\u0085', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\u0085' },
  { name: 'an unpaired surrogate is refused on Windows', os: W, input: 'C:\\a\ud800', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\uD800' },
  { name: 'a reversed surrogate pair is refused on Windows', os: W, input: 'C:\\a\udc00\ud800', reason: 'DRIVE_PATH_INVALID', shown: 'C:\\a\\uDC00\\uD800' },
  // Windows: reserved device names
  ...['CON', 'con', 'Prn', 'AUX', 'nul', 'COM1', 'com9', 'LPT1', 'lpt9', 'COM0', 'COM¹', 'lpt³', 'CONIN$', 'conout$'].map(
    (dev): Refused => ({ name: `the device name ${dev} is refused as a folder name`, os: W, input: `C:\\${dev}`, reason: 'DRIVE_PATH_RESERVED_NAME' }),
  ),
  { name: 'a device name with an extension is refused (nul.txt)', os: W, input: 'C:\\nul.txt', reason: 'DRIVE_PATH_RESERVED_NAME' },
  { name: 'a device name with several extensions is refused (CON.tar.gz)', os: W, input: 'E:\\CON.tar.gz', reason: 'DRIVE_PATH_RESERVED_NAME' },
  { name: 'a device name with spaces before the dot is refused (aux  .log)', os: W, input: 'C:\\aux  .log', reason: 'DRIVE_PATH_RESERVED_NAME' },
  { name: 'a device name followed by spaces is refused as reserved', os: W, input: 'C:\\nul  ', reason: 'DRIVE_PATH_RESERVED_NAME' },
  { name: 'a device name deeper in the path is refused', os: W, input: 'C:\\mt1\\com3\\data', reason: 'DRIVE_PATH_RESERVED_NAME' },
  // Windows: trailing spaces and dots
  { name: 'a folder name ending with a space is refused', os: W, input: 'C:\\mt1 ', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a folder name ending with a dot is refused', os: W, input: 'C:\\mt1.', reason: 'DRIVE_PATH_INVALID' },
  { name: 'an inner folder name ending with a space is refused', os: W, input: 'C:\\mt1 \\data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a folder name of three dots is refused', os: W, input: 'C:\\...', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a folder name of only spaces is refused', os: W, input: 'E:\\   \\x', reason: 'DRIVE_PATH_INVALID' },
  // Windows: length
  { name: 'a folder name of 256 characters is refused', os: W, input: `C:\\${a(256)}`, reason: 'DRIVE_PATH_TOO_LONG' },
  { name: 'a folder path of 261 characters is refused', os: W, input: `C:\\${a(255)}\\bc`, reason: 'DRIVE_PATH_TOO_LONG' },
  { name: 'many short folders over 260 characters are refused', os: W, input: `E:${'\\ab'.repeat(100)}`, reason: 'DRIVE_PATH_TOO_LONG' },
  {
    name: 'an input over 32768 characters is refused before parsing, the message showing its start',
    os: W,
    input: `E:${'\\'.repeat(40_000)}`,
    reason: 'DRIVE_PATH_TOO_LONG',
    shown: `"E:${'\\'.repeat(118)}…" (40002 characters)`,
  },
  // Linux
  { name: 'a relative Linux path is refused', os: L, input: 'mnt/data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a Linux path starting with ./ is refused', os: L, input: './mnt', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a Linux path starting with ~ is refused', os: L, input: '~/data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a Windows path is refused on Linux', os: L, input: 'C:\\mt1', reason: 'DRIVE_PATH_INVALID' },
  { name: 'leading whitespace before a Linux path is refused', os: L, input: ' /mnt/data', reason: 'DRIVE_PATH_INVALID' },
  { name: '/ is refused as the boot volume', os: L, input: '/', reason: 'DRIVE_PATH_RESERVED_NAME' },
  { name: '// is refused as the boot volume', os: L, input: '///', reason: 'DRIVE_PATH_RESERVED_NAME' },
  ...['/proc', '/sys', '/dev', '/run', '/proc/1', '/sys/fs/cgroup', '/dev/shm', '/run/user/1000', '//proc//', '/dev/'].map(
    (p): Refused => ({ name: `the pseudo-filesystem path ${p} is refused`, os: L, input: p, reason: 'DRIVE_PATH_RESERVED_NAME' }),
  ),
  { name: 'a . segment is refused on Linux', os: L, input: '/mnt/./data', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a trailing . segment is refused on Linux', os: L, input: '/mnt/.', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a .. segment is refused on Linux', os: L, input: '/mnt/../etc', reason: 'DRIVE_PATH_INVALID' },
  { name: 'a .. that would hide /proc is refused as .., not accepted', os: L, input: '/mnt/../proc', reason: 'DRIVE_PATH_INVALID' },
  { name: 'NUL is refused on Linux', os: L, input: '/mnt/a\u0000b', reason: 'DRIVE_PATH_INVALID', shown: '/mnt/a\\u0000b' },
  { name: 'a newline is refused on Linux', os: L, input: '/mnt/a\nb', reason: 'DRIVE_PATH_INVALID', shown: '/mnt/a\\u000Ab' },
  { name: 'an escape character is refused on Linux', os: L, input: '/mnt/\u001b[31m', reason: 'DRIVE_PATH_INVALID', shown: '/mnt/\\u001B[31m' },
  { name: 'an unpaired surrogate is refused on Linux', os: L, input: '/mnt/\udc00x', reason: 'DRIVE_PATH_INVALID', shown: '/mnt/\\uDC00x' },
  { name: 'a name of 256 bytes is refused', os: L, input: `/mnt/${a(256)}`, reason: 'DRIVE_PATH_TOO_LONG' },
  { name: 'a name of 128 two-byte characters (256 bytes) is refused', os: L, input: `/${'é'.repeat(128)}`, reason: 'DRIVE_PATH_TOO_LONG' },
  { name: 'a path of 4096 bytes is refused', os: L, input: `/${a(255)}`.repeat(16), reason: 'DRIVE_PATH_TOO_LONG' },
  {
    name: 'a path of 4096 bytes made of multi-byte characters is refused',
    os: L,
    input: `/${'€'.repeat(85)}`.repeat(16),
    reason: 'DRIVE_PATH_TOO_LONG',
  },
  {
    name: 'an input over 32768 characters is refused on Linux before parsing',
    os: L,
    input: '/'.repeat(40_000),
    reason: 'DRIVE_PATH_TOO_LONG',
    shown: '(40000 characters)',
  },
];

function refusal(os: GuestOsName, input: string): InvalidArgumentError {
  try {
    parseDrivePath(os, input);
  } catch (err) {
    expect(err).to.be.instanceOf(InvalidArgumentError);
    return err as InvalidArgumentError;
  }
  expect.fail(`expected ${JSON.stringify(input)} to be refused on ${os}`);
}

const show = (s: string) => (s.length > 60 ? `${JSON.stringify(s.slice(0, 40))}… (${s.length} chars)` : JSON.stringify(s));

describe('parseDrivePath: accepted paths and their normalized form', () => {
  for (const row of ACCEPTED) {
    it(`${row.os}: ${row.name}: ${show(row.input)} -> ${show(row.expected.path)}`, () => {
      const got = parseDrivePath(row.os, row.input);
      expect({ ...got }).to.deep.equal(row.expected);
      expect(parseDrivePath(row.os, got.path)).to.deep.equal(got);
    });
  }

  it('two spellings of one Windows folder have one key', () => {
    expect(parseDrivePath('windows', 'c:/MT1/Data/').key).to.equal(parseDrivePath('windows', 'C:\\mt1\\data').key);
  });

  it('two spellings differing in case are two Linux mounts', () => {
    expect(parseDrivePath('linux', '/mnt/Data').key).not.to.equal(parseDrivePath('linux', '/mnt/data').key);
  });

  it('returns a frozen value, so a caller cannot change a key in place', () => {
    expect(Object.isFrozen(parseDrivePath('windows', 'C:\\mt1'))).to.equal(true);
  });
});

describe('parseDrivePath: refused paths, with the reason and a message naming the input', () => {
  for (const row of REFUSED) {
    it(`${row.os}: ${row.name}: ${show(row.input)} -> ${row.reason}`, () => {
      const err = refusal(row.os, row.input);
      expect(err.reason).to.equal(row.reason);
      expect(err.field).to.equal('mount_path');
      // Long input is shown by its start and its length, not in full.
      const shown = row.shown ?? (row.input.length > 100 ? `"${row.input.slice(0, 100)}` : `"${row.input}"`);
      expect(err.message).to.include(shown);
      expect(err.message.length).to.be.below(500);
    });
  }

  it('a refusal on Windows says what is accepted', () => {
    expect(refusal('windows', 'mt1').message).to.match(/D: to Z:.*C:\\mt1/);
  });

  it('a refusal on Linux says what is accepted', () => {
    expect(refusal('linux', 'mnt/data').message).to.include('absolute path such as /mnt/data');
  });

  it('a drive-relative path is answered with the absolute form to write instead', () => {
    expect(refusal('windows', 'E:mt1').message).to.include('write "E:\\mt1"');
  });

  it('an unknown guest OS is refused as an invalid argument, not a crash', () => {
    const err = (() => {
      try {
        parseDrivePath('macos' as GuestOsName, '/mnt');
      } catch (e) {
        return e;
      }
    })();
    expect(err).to.be.instanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).to.equal('guest_os');
  });

  it('a value that is not a string is refused as an invalid argument, not a crash', () => {
    for (const value of [undefined, null, 42, {}, ['E:']]) {
      expect(() => parseDrivePath('windows', value as unknown as string)).to.throw(InvalidArgumentError);
    }
  });
});

describe('parseDrivePath: hostile input is answered quickly', () => {
  const N = 100_000;
  const UNDER_CAP = 32_000;
  const hostile: [string, GuestOsName, string][] = [
    ['100 kB of backslashes after a drive', 'windows', `C:${'\\'.repeat(N)}`],
    ['100 kB of slashes', 'linux', '/'.repeat(N)],
    ['100 kB of spaces', 'windows', ' '.repeat(N)],
    ['100 kB of NUL', 'linux', '\u0000'.repeat(N)],
    ['100 kB of unpaired surrogates', 'windows', '\ud800'.repeat(N)],
    ['32 k separators before one name (normalizes to C:\\x)', 'windows', `C:${'\\/'.repeat(UNDER_CAP / 2)}x`],
    ['32 k slashes before one name', 'linux', `${'/'.repeat(UNDER_CAP)}mnt`],
    ['one folder name of 32 k spaces then an extension', 'windows', `C:\\nul${' '.repeat(UNDER_CAP)}.txt`],
    ['one folder name of 32 k characters', 'windows', `C:\\${a(UNDER_CAP)}`],
    ['16 k one-letter folders', 'windows', `C:${'\\a'.repeat(UNDER_CAP / 2)}`],
    ['16 k one-letter Linux names', 'linux', '/a'.repeat(UNDER_CAP / 2)],
    ['32 k dots and spaces', 'windows', `C:\\${'. '.repeat(UNDER_CAP / 2)}`],
    ['32 k emoji', 'linux', `/${'😀'.repeat(UNDER_CAP / 2)}`],
    ['a drive-relative path of 32 k characters (the message suggests a fix)', 'windows', `E:${a(UNDER_CAP)}`],
  ];
  for (const [what, os, input] of hostile) {
    it(`${os}: ${what} is answered in under 50 ms with a result or an InvalidArgumentError`, () => {
      const started = performance.now();
      try {
        parseDrivePath(os, input);
      } catch (err) {
        expect(err).to.be.instanceOf(InvalidArgumentError);
        expect((err as Error).message.length).to.be.below(500);
      }
      expect(performance.now() - started).to.be.below(50);
    });
  }
});

describe('isInside', () => {
  const w = (p: string) => parseDrivePath('windows', p);
  const l = (p: string) => parseDrivePath('linux', p);
  const rows: [string, DrivePath, DrivePath, boolean][] = [
    ['a folder under a folder mount point is inside it', w('C:\\mt1\\data'), w('C:\\mt1'), true],
    ['Windows containment ignores case', w('c:\\MT1\\data'), w('C:\\mt1'), true],
    ['a folder mount point on a drive is inside that drive', w('E:\\data'), w('E:'), true],
    ['a folder on C: is inside the C: volume', w('C:\\mt1'), volumeOf(w('C:\\mt1'))!, true],
    ['a deep folder is inside a drive', w('E:\\a\\b\\c'), w('E:'), true],
    ['a path is not strictly inside itself (Windows)', w('C:\\mt1'), w('c:\\MT1'), false],
    ['a drive is not inside itself', w('E:'), w('e:\\'), false],
    ['a sibling sharing a prefix is not inside (C:\\mt10 vs C:\\mt1)', w('C:\\mt10'), w('C:\\mt1'), false],
    ['an outer path is not inside an inner one', w('C:\\mt1'), w('C:\\mt1\\data'), false],
    ['a folder on another drive is not inside', w('E:\\data'), w('F:'), false],
    ['a path under a Linux mount is inside it', l('/mnt/data/x'), l('/mnt/data'), true],
    ['a sibling sharing a prefix is not inside (/mnt/database vs /mnt/data)', l('/mnt/database'), l('/mnt/data'), false],
    ['Linux containment is case-sensitive', l('/Mnt/data/x'), l('/mnt/data'), false],
    ['a path is not strictly inside itself (Linux)', l('/mnt/data'), l('//mnt/data/'), false],
    ['a Linux path is never inside a Windows one', l('/E:/x'), w('E:'), false],
    ['a Windows path is never inside a Linux one', w('E:\\x'), l('/E:'), false],
  ];
  for (const [what, inner, outer, expected] of rows) {
    it(`${what}: isInside(${inner.path}, ${outer.path}) is ${expected}`, () => {
      expect(isInside(inner, outer)).to.equal(expected);
    });
  }
});

describe('volumeOf', () => {
  it('a folder on C: sits on the C: volume, even though C: itself is refused as a mount path', () => {
    expect({ ...volumeOf(parseDrivePath('windows', 'C:\\mt1'))! }).to.deep.equal(drive('C:'));
  });

  it('a folder on a lower-cased drive sits on the upper-case drive', () => {
    expect({ ...volumeOf(parseDrivePath('windows', 'e:\\x\\y'))! }).to.deep.equal(drive('E:'));
  });

  it('the volume of a folder equals the parsed drive letter', () => {
    expect(volumeOf(parseDrivePath('windows', 'F:\\data'))).to.deep.equal(parseDrivePath('windows', 'f:'));
  });

  it('a drive letter has no volume above it', () => {
    expect(volumeOf(parseDrivePath('windows', 'E:'))).to.equal(undefined);
  });

  it('a Linux path has no Windows volume', () => {
    expect(volumeOf(parseDrivePath('linux', '/mnt/data'))).to.equal(undefined);
  });
});

describe('namePart', () => {
  const rows: [GuestOsName, string, string][] = [
    ['windows', 'C:\\mt1', 'C mt1'],
    ['windows', 'E:', 'E'],
    ['windows', 'e:\\', 'E'],
    ['windows', 'C:\\mt1\\data', 'C mt1 data'],
    ['windows', 'C:/mt1//data/', 'C mt1 data'],
    ['windows', 'C:\\my data', 'C my data'],
    ['windows', 'C:\\ lead', 'C lead'],
    ['windows', 'C:\\données', 'C données'],
    ['linux', '/mnt/data', 'mnt data'],
    ['linux', '/mnt/a:b', 'mnt a b'],
    ['linux', '/mnt/data ', 'mnt data'],
  ];
  for (const [os, input, expected] of rows) {
    it(`${os}: ${JSON.stringify(input)} is named ${JSON.stringify(expected)}: separators and ':' become single spaces, trimmed`, () => {
      expect(namePart(parseDrivePath(os, input))).to.equal(expected);
    });
  }
});

describe('safeToken', () => {
  const tok = (os: GuestOsName, input: string) => safeToken(parseDrivePath(os, input));

  const plain: [GuestOsName, string, string][] = [
    ['windows', 'C:\\mt1', 'C_mt1'],
    ['windows', 'E:', 'E'],
    ['windows', 'c:/MT1/Data2', 'C_MT1_Data2'],
    ['linux', '/mnt/data', 'mnt_data'],
    ['linux', '//mnt//data//', 'mnt_data'],
  ];
  for (const [os, input, expected] of plain) {
    it(`${os}: letters and digits between separators map one-to-one: ${JSON.stringify(input)} -> ${expected}`, () => {
      expect(tok(os, input)).to.equal(expected);
    });
  }

  it('other characters become one _ and a hash of the path is appended, so C:\\my data and C:\\my_data differ', () => {
    const spaced = tok('windows', 'C:\\my data');
    const underscored = tok('windows', 'C:\\my_data');
    expect(spaced).to.match(/^C_my_data_[0-9a-f]{8}$/);
    expect(underscored).to.match(/^C_my_data_[0-9a-f]{8}$/);
    expect(spaced).not.to.equal(underscored);
  });

  it('runs of other characters collapse to one _', () => {
    expect(tok('linux', '/mnt/a -- b')).to.match(/^mnt_a_b_[0-9a-f]{8}$/);
  });

  it('a path with no ASCII letter or digit still gets a non-empty token', () => {
    expect(tok('linux', '/数据')).to.match(/^p_[0-9a-f]{8}$/);
    expect(tok('linux', '/数据')).not.to.equal(tok('linux', '/資料'));
  });

  it('is the same for the same path every time', () => {
    expect(tok('windows', 'C:\\my data')).to.equal(tok('windows', 'C:\\my data'));
  });

  it('is at most 64 characters, and long paths sharing a prefix keep distinct tokens', () => {
    const one = tok('linux', `/${a(200)}/one`);
    const two = tok('linux', `/${a(200)}/two`);
    expect(one.length).to.be.at.most(64);
    expect(two.length).to.be.at.most(64);
    expect(one).not.to.equal(two);
  });
});

describe('parseDrivePath: property over arbitrary strings', () => {
  const pieces = [
    'C:', 'c:', 'E:', 'z:', 'a:', 'B:', '\\', '/', '\\\\', '//', '\\\\?\\', '.', '..', ' ', '  ', ':', '?', '*', '"', '<', '|',
    'con', 'NUL', 'com1', 'LPT9', 'COM¹', '.txt', 'mt1', 'data', 'proc', 'dev', 'é', 'ß', 'İ', 'ſ', '数', '😀', '\u0000',
    '\u001f', '\u0085', '\ud800', '\udc00', 'a'.repeat(130),
  ];
  const structured = fc.string({ unit: fc.constantFrom(...pieces), maxLength: 12 });
  // Starts like a path, so that many inputs get past the first checks and test normalization.
  const pathLike = fc
    .tuple(fc.constantFrom('C:\\', 'e:/', 'Z:\\\\', '/', '//', '/mnt/'), fc.string({ unit: fc.constantFrom(...pieces), maxLength: 8 }))
    .map(([head, tail]) => head + tail);
  const anyText = fc.string({ unit: 'binary', maxLength: 40 });
  const rawUnits = fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 40 });

  it('either returns a path whose re-parse is identical, with a safe token, or throws InvalidArgumentError', () => {
    fc.assert(
      fc.property(fc.constantFrom<GuestOsName>('windows', 'linux'), fc.oneof(structured, pathLike, anyText, rawUnits), (os, input) => {
        let parsed: DrivePath;
        try {
          parsed = parseDrivePath(os, input);
        } catch (err) {
          if (!(err instanceof InvalidArgumentError)) return false;
          return err.field === 'mount_path' && REASONS.includes(err.reason);
        }
        const again = parseDrivePath(os, parsed.path);
        expect(again).to.deep.equal(parsed);
        expect(safeToken(parsed)).to.match(/^[A-Za-z0-9](?:[A-Za-z0-9_]{0,62}[A-Za-z0-9])?$/);
        expect(safeToken(parsed)).not.to.include('__');
        return true;
      }),
      { numRuns: 5000 },
    );
  });
});
