/**
 * The atproto data model (atproto.com/specs/data-model) and its JSON form.
 *
 * In memory (and in DRISL) a value is null, a boolean, an integer, a string,
 * bytes (`Uint8Array`), a CID link (`CID`), an array, or an object with string
 * keys. JSON has no bytes or links, so they are written `{"$bytes": base64}` and
 * `{"$link": cid}`. Floats are not part of the data model; `$type`, where
 * present, is a non-empty string; an object with `$type: "blob"` is a blob
 * reference with exactly `ref` (a raw-codec CID), `mimeType` and `size`.
 *
 * Atproto data is an object at the top level (records, XRPC bodies), so the
 * entry points insist on one.
 */
import { CID } from 'multiformats/cid'
import { InvalidDataModelError } from '../errors.ts'
import { RAW, SHA2_256 } from './cid.ts'

/** Longest `$link` string accepted (CIDs are far shorter; this bounds parsing work). */
const MAX_LINK_LENGTH = 2048
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/
const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n
const BLOB_KEYS = new Set(['$type', 'ref', 'mimeType', 'size'])

/**
 * Converts atproto JSON (`$link`, `$bytes`, blob objects) to a data-model
 * object, checking every rule on the way. Throws {@link InvalidDataModelError}
 * naming the path of the first offending value.
 */
export function jsonToDataModel (json: unknown): Record<string, unknown> {
  if (!isPlainObject(json) || Object.hasOwn(json, '$link') || Object.hasOwn(json, '$bytes')) {
    throw new InvalidDataModelError('top level is not an object')
  }
  return fromJson(json, '') as Record<string, unknown>
}

/**
 * Converts a data-model value to atproto JSON: CIDs become `{"$link"}` and
 * bytes `{"$bytes"}` (base64 without padding). Throws {@link InvalidDataModelError}
 * for values outside the data model (floats, integers JSON cannot hold exactly).
 */
export function dataModelToJson (value: unknown): unknown {
  return toJson(value, '')
}

/**
 * Checks a decoded value (e.g. a record from DRISL) against the data model:
 * an object at the top level, no floats, `$type` rules, blob shape. Throws
 * {@link InvalidDataModelError}.
 */
export function assertDataModel (value: unknown): asserts value is Record<string, unknown> {
  if (!isPlainObject(value)) throw new InvalidDataModelError('top level is not an object')
  checkValue(value, '')
}

/** Whether a decoded value satisfies {@link assertDataModel}. */
export function isValidDataModel (value: unknown): value is Record<string, unknown> {
  try {
    assertDataModel(value)
    return true
  } catch (err) {
    if (err instanceof InvalidDataModelError) return false
    throw err
  }
}

function fromJson (value: unknown, path: string): unknown {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value
  if (typeof value === 'number') return checkNumber(value, path)
  if (Array.isArray(value)) return value.map((item, i) => fromJson(item, join(path, i)))
  if (!isPlainObject(value)) throw new InvalidDataModelError(`unsupported JSON value (${typeof value})`, { path })
  if (Object.hasOwn(value, '$link')) return parseLink(value, path)
  if (Object.hasOwn(value, '$bytes')) return parseBytes(value, path)
  const out: Record<string, unknown> = {}
  for (const [key, item] of Object.entries(value)) {
    defineKey(out, key, fromJson(item, join(path, key)))
  }
  checkObjectRules(out, path)
  return out
}

function toJson (value: unknown, path: string): unknown {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value
  if (typeof value === 'number') return checkNumber(value, path)
  if (typeof value === 'bigint') {
    if (value < BigInt(Number.MIN_SAFE_INTEGER) || value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new InvalidDataModelError('integer too large for JSON', { path })
    }
    return Number(value)
  }
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64').replace(/=+$/, '') }
  const cid = CID.asCID(value)
  if (cid !== null) return { $link: cid.toString() }
  if (Array.isArray(value)) return value.map((item, i) => toJson(item, join(path, i)))
  if (!isPlainObject(value)) throw new InvalidDataModelError(`unsupported value (${describe(value)})`, { path })
  checkObjectRules(value, path)
  const out: Record<string, unknown> = {}
  for (const [key, item] of Object.entries(value)) defineKey(out, key, toJson(item, join(path, key)))
  return out
}

function checkValue (value: unknown, path: string): void {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return
  if (typeof value === 'number') {
    checkNumber(value, path)
    return
  }
  if (typeof value === 'bigint') {
    if (value < INT64_MIN || value > INT64_MAX) throw new InvalidDataModelError('integer outside 64-bit signed range', { path })
    return
  }
  if (value instanceof Uint8Array || CID.asCID(value) !== null) return
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) checkValue(value[i], join(path, i))
    return
  }
  if (!isPlainObject(value)) throw new InvalidDataModelError(`unsupported value (${describe(value)})`, { path })
  checkObjectRules(value, path)
  for (const [key, item] of Object.entries(value)) checkValue(item, join(path, key))
}

/** `$type` and blob rules, on an object whose values are already in data-model form. */
function checkObjectRules (obj: Record<string, unknown>, path: string): void {
  if (!Object.hasOwn(obj, '$type')) return
  const type = obj.$type
  if (typeof type !== 'string') throw new InvalidDataModelError(`$type is ${describe(type)}, want a string`, { path: join(path, '$type') })
  if (type.length === 0) throw new InvalidDataModelError('$type is empty', { path: join(path, '$type') })
  if (type === 'blob') checkBlob(obj, path)
}

function checkBlob (obj: Record<string, unknown>, path: string): void {
  for (const key of BLOB_KEYS) {
    if (!Object.hasOwn(obj, key)) throw new InvalidDataModelError(`blob lacks ${key}`, { path })
  }
  for (const key of Object.keys(obj)) {
    if (!BLOB_KEYS.has(key)) throw new InvalidDataModelError(`blob has unexpected field ${JSON.stringify(key)}`, { path })
  }
  const ref = CID.asCID(obj.ref)
  if (ref === null) throw new InvalidDataModelError(`blob ref is ${describe(obj.ref)}, want a CID link`, { path: join(path, 'ref') })
  if (ref.version !== 1 || ref.code !== RAW || ref.multihash.code !== SHA2_256) {
    throw new InvalidDataModelError('blob ref is not a CIDv1 raw sha2-256 link', { path: join(path, 'ref') })
  }
  if (typeof obj.mimeType !== 'string' || obj.mimeType.length === 0) {
    throw new InvalidDataModelError(`blob mimeType is ${describe(obj.mimeType)}, want a non-empty string`, { path: join(path, 'mimeType') })
  }
  if (typeof obj.size !== 'number' || !Number.isSafeInteger(obj.size) || obj.size < 0) {
    throw new InvalidDataModelError(`blob size is ${describe(obj.size)}, want a non-negative integer`, { path: join(path, 'size') })
  }
}

function checkNumber (value: number, path: string): number {
  if (!Number.isInteger(value)) throw new InvalidDataModelError('float not allowed', { path })
  if (!Number.isSafeInteger(value)) throw new InvalidDataModelError('integer outside the safe range', { path })
  return value
}

function parseLink (obj: Record<string, unknown>, path: string): CID {
  if (Object.keys(obj).length !== 1) throw new InvalidDataModelError('$link object has other fields', { path })
  const text = obj.$link
  if (typeof text !== 'string') throw new InvalidDataModelError(`$link is ${describe(text)}, want a string`, { path })
  if (text.length === 0 || text.length > MAX_LINK_LENGTH) throw new InvalidDataModelError('$link has a bad length', { path })
  try {
    return CID.parse(text)
  } catch {
    throw new InvalidDataModelError('$link is not a CID', { path })
  }
}

function parseBytes (obj: Record<string, unknown>, path: string): Uint8Array {
  if (Object.keys(obj).length !== 1) throw new InvalidDataModelError('$bytes object has other fields', { path })
  const text = obj.$bytes
  if (typeof text !== 'string') throw new InvalidDataModelError(`$bytes is ${describe(text)}, want a string`, { path })
  // Base64 (RFC 4648 §4, not URL-safe); padding optional. Re-encoding catches
  // stray characters and non-zero trailing bits that Buffer would quietly drop.
  const unpadded = text.replace(/=+$/, '')
  if (!BASE64_RE.test(text) || unpadded.length % 4 === 1 || (unpadded.length !== text.length && text.length % 4 !== 0)) {
    throw new InvalidDataModelError('$bytes is not base64', { path })
  }
  const bytes = Buffer.from(unpadded, 'base64')
  if (bytes.toString('base64').replace(/=+$/, '') !== unpadded) throw new InvalidDataModelError('$bytes is not canonical base64', { path })
  return new Uint8Array(bytes) // a copy: small Buffers are views into a shared pool
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

/** Sets `key` as an own property even when it is `__proto__`. */
function defineKey (obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true })
  else obj[key] = value
}

function join (path: string, key: string | number): string {
  return path === '' ? String(key) : `${path}.${key}`
}

function describe (value: unknown): string {
  if (value === null) return 'null'
  if (value === undefined) return 'missing'
  if (Array.isArray(value)) return 'an array'
  if (value instanceof Uint8Array) return 'bytes'
  if (typeof value === 'object') return `an object (${value.constructor?.name ?? 'null prototype'})`
  if (typeof value === 'string') return `string ${JSON.stringify(value.slice(0, 64))}`
  return `${typeof value} ${String(value)}`
}
