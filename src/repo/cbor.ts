/**
 * DAG-CBOR in atproto's strict profile (DRISL): definite lengths, minimal integer
 * and length encodings, string map keys in canonical order without duplicates,
 * only tag 42 (CIDs), no undefined/NaN/Infinity. atproto's data model also has no
 * floats, so a float anywhere is rejected.
 *
 * Decoding uses @ipld/dag-cbor's strict options; what they leave unchecked (key
 * order, float width) is caught by re-encoding and comparing bytes, which is exact
 * and cheap for repository-sized blocks.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { decode as cborgDecode } from 'cborg'
import { CborDecodeError, type CidLike } from '../errors.ts'

const decodeOptions = {
  ...dagCbor.decodeOptions,
  allowUndefined: false,
  allowIndefinite: false,
  strict: true,
  rejectDuplicateMapKeys: true
}

export interface DecodeOptions {
  /** Named in errors. */
  cid?: CidLike
  /** Reject floats (atproto data model). @default true */
  rejectFloats?: boolean
  /** Re-encode and compare to enforce canonical form. @default true */
  canonical?: boolean
}

/** Decodes one DRISL value; throws {@link CborDecodeError} naming `cid`. */
export function decodeCbor<T = unknown> (bytes: Uint8Array, options: DecodeOptions = {}): T {
  let value: unknown
  try {
    value = cborgDecode(bytes, decodeOptions)
  } catch (err) {
    throw new CborDecodeError((err as Error).message, { cid: options.cid }, { cause: err })
  }
  if (options.rejectFloats !== false) assertNoFloats(value, options.cid)
  if (options.canonical !== false) {
    const again = dagCbor.encode(value)
    if (!Buffer.from(again.buffer, again.byteOffset, again.byteLength).equals(bytes)) {
      throw new CborDecodeError('not in canonical form (map key order or encoding width)', { cid: options.cid })
    }
  }
  return value as T
}

/** Encodes a value as DRISL (canonical DAG-CBOR). */
export function encodeCbor (value: unknown): Uint8Array {
  return dagCbor.encode(value)
}

function assertNoFloats (value: unknown, cid: CidLike | undefined): void {
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new CborDecodeError('float not allowed in atproto data', { cid })
    return
  }
  if (value === null || typeof value !== 'object') return
  if (Array.isArray(value)) {
    for (const item of value) assertNoFloats(item, cid)
    return
  }
  if (value instanceof Uint8Array) return
  if ((value as { asCID?: unknown }).asCID === value) return
  for (const key in value) assertNoFloats((value as Record<string, unknown>)[key], cid)
}
