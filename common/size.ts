import { InvalidArgumentError } from './errors.js';

const BINARY: Record<string, number> = { '': 0, B: 0, K: 1, KI: 1, M: 2, MI: 2, G: 3, GI: 3, T: 4, TI: 4, P: 5, PI: 5 };
const DECIMAL: Record<string, number> = { KB: 1, MB: 2, GB: 3, TB: 4, PB: 5 };

/**
 * Parses a size as people write it: 4096, 512MiB, 10GiB, 1.5TiB (binary units; K, M, G, T
 * alone are binary too), or 100GB (decimal units, as disk vendors count).
 */
export function parseSize(text: string, field = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  const unit = (m?.[2] ?? '').toUpperCase();
  const binary = BINARY[unit.replace(/(I?)B$/, '$1')];
  const decimal = DECIMAL[unit];
  if (!m || (binary === undefined && decimal === undefined)) {
    throw new InvalidArgumentError(field, `${field} ${JSON.stringify(text)} is not a size: write e.g. 4096, 512MiB, 10GiB or 1TiB`);
  }
  const bytes = decimal !== undefined ? Number(m[1]) * 1000 ** decimal : Number(m[1]) * 1024 ** binary!;
  if (!Number.isSafeInteger(bytes)) {
    throw new InvalidArgumentError(field, `${field} ${JSON.stringify(text)} is not a whole number of bytes`);
  }
  return bytes;
}

/** Writes a byte count the short way people read it: 1 GiB, 512 MiB, 4.5 KiB, 100 B. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const text = Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, '');
  return `${text} ${units[i]}`;
}
