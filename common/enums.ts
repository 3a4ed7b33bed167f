import { InvalidArgumentError } from './errors.js';

/**
 * Translates a proto enum to the domain's words and back. The zero (UNSPECIFIED) value
 * reads as undefined, so the domain decides whether a field is required; a number the
 * contract does not know is INVALID_ARGUMENT, listing what is valid.
 */
export class EnumCodec<D extends string> {
  private readonly byWire: Map<number, D>;
  private readonly byDomain: Map<D, number>;

  constructor(
    readonly field: string,
    pairs: readonly (readonly [number, D])[],
  ) {
    this.byWire = new Map(pairs);
    this.byDomain = new Map(pairs.map(([n, d]) => [d, n]));
  }

  get names(): D[] {
    return [...this.byDomain.keys()];
  }

  fromWire(value: number, field = this.field): D | undefined {
    if (value === 0) return undefined;
    const d = this.byWire.get(value);
    if (d === undefined) {
      throw new InvalidArgumentError(field, `${field} ${value} is not a known value: one of ${this.names.join(', ')}`);
    }
    return d;
  }

  toWire(value: D): number {
    return this.byDomain.get(value) ?? 0;
  }

  /** For command lines: the domain word, case-insensitive. */
  fromName(name: string, field = this.field): D {
    const d = this.names.find((n) => n === name.toLowerCase());
    if (d === undefined) {
      throw new InvalidArgumentError(field, `${field} ${JSON.stringify(name)} is not one of ${this.names.join(', ')}`);
    }
    return d;
  }
}
