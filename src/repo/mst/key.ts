/**
 * MST keys: their height (layer) and the rules a key must follow.
 *
 * A key's height is the number of leading zero bits of SHA-256(key), counted in
 * 2-bit steps (fanout 4). Keys are record paths `collection/rkey`, ASCII today
 * (UTF-8 by spec), so a JavaScript string compares and slices like the bytes.
 */
import { hash } from 'node:crypto'
import { InvalidRecordPathError } from '../../errors.ts'

/**
 * Longest key accepted, in bytes. The reference implementation's limit; a valid
 * NSID (317) plus `/` plus a valid record key (512) fits well below it.
 */
export const MAX_KEY_LENGTH = 1024

/** The MST layer of `key`: leading zero bits of its SHA-256, divided by two. */
export function keyHeight (key: string | Uint8Array): number {
  // One-shot hex digest: the cheapest SHA-256 node offers for short inputs
  // (no Hash object, no Buffer), and a hex digit is exactly 4 bits.
  const hex = hash('sha256', key, 'hex')
  let zeros = 0
  for (let i = 0; i < hex.length; i++) {
    const c = hex.charCodeAt(i)
    if (c === 0x30) { // '0'
      zeros += 4
      continue
    }
    const nibble = c <= 0x39 ? c - 0x30 : c - 0x57
    zeros += Math.clz32(nibble) - 28
    break
  }
  return zeros >> 1
}

/**
 * How many leading bytes `a` and `b` share. Strings are compared as their UTF-8
 * bytes (which for ASCII keys is char by char).
 */
export function commonPrefixLength (a: string | Uint8Array, b: string | Uint8Array): number {
  if (typeof a === 'string' && typeof b === 'string' && isAscii(a) && isAscii(b)) {
    const n = Math.min(a.length, b.length)
    let i = 0
    while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++
    return i
  }
  const x = typeof a === 'string' ? Buffer.from(a, 'utf8') : a
  const y = typeof b === 'string' ? Buffer.from(b, 'utf8') : b
  const n = Math.min(x.length, y.length)
  let i = 0
  while (i < n && x[i] === y[i]) i++
  return i
}

function isAscii (text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 0x7f) return false
  }
  return true
}

/**
 * Why `key` is not a valid MST key, or `undefined` when it is. The rules are the
 * repository spec's record path rules as enforced on MST keys by the reference
 * implementation: `collection/rkey`, both segments non-empty and made of
 * `A-Za-z0-9 . - _ : ~`, at most {@link MAX_KEY_LENGTH} bytes; `.` and `..` are
 * never valid segments (spec). NSID syntax of the collection is NOT checked here:
 * the MST itself does not depend on it and the conformance vectors use keys such
 * as `k/00`.
 */
export function mstKeyProblem (key: string): string | undefined {
  const length = key.length
  if (length === 0) return 'empty'
  if (length > MAX_KEY_LENGTH) return `longer than ${MAX_KEY_LENGTH} bytes`
  let slash = -1
  for (let i = 0; i < length; i++) {
    const c = key.charCodeAt(i)
    if (c === 0x2f) {
      if (slash !== -1) return 'more than one "/"'
      slash = i
      continue
    }
    if (!isKeyChar(c)) return `character ${JSON.stringify(key[i])} not allowed`
  }
  if (slash === -1) return 'no "/" between collection and record key'
  if (slash === 0) return 'empty collection'
  if (slash === length - 1) return 'empty record key'
  const collection = key.slice(0, slash)
  const rkey = key.slice(slash + 1)
  if (collection === '.' || collection === '..') return `collection ${JSON.stringify(collection)} not allowed`
  if (rkey === '.' || rkey === '..') return `record key ${JSON.stringify(rkey)} not allowed`
  return undefined
}

/** Whether `key` is a valid MST key (see {@link mstKeyProblem}). */
export function isValidMstKey (key: string): boolean {
  return mstKeyProblem(key) === undefined
}

/** Throws {@link InvalidRecordPathError} unless `key` is a valid MST key. */
export function ensureValidMstKey (key: string): void {
  const problem = mstKeyProblem(key)
  if (problem !== undefined) throw new InvalidRecordPathError(key, problem)
}

function isKeyChar (c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || // a-z
    (c >= 0x41 && c <= 0x5a) || // A-Z
    (c >= 0x30 && c <= 0x39) || // 0-9
    c === 0x2e || c === 0x2d || c === 0x5f || c === 0x3a || c === 0x7e // . - _ : ~
}
