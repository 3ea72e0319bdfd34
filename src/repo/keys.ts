/**
 * atproto signing keys (atproto.com/specs/cryptography): secp256k1 ("k256") and
 * NIST P-256 ("p256") public keys as `did:key` / Multikey strings, the legacy
 * DID-document form, and ECDSA signature checks with atproto's rules (SHA-256
 * of the message, 64-byte compact `r || s`, low-S only).
 *
 * Points are parsed and checked with noble. Signatures are checked by Node's
 * OpenSSL (node:crypto `verify`), which is 4x (k256) to 25x (p256) faster than
 * noble's pure-JS verify, and a follower checks one signature per commit: the
 * key is wrapped once as a DER SubjectPublicKeyInfo `KeyObject` (OpenSSL
 * decompresses the point) and kept with the {@link PublicKey} object. OpenSSL
 * accepts high-S signatures, so the low-S rule is checked here, before it.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto'
import { p256 } from '@noble/curves/nist.js'
import { secp256k1 } from '@noble/curves/secp256k1.js'
import { varint } from 'multiformats'
import { base58btc } from 'multiformats/bases/base58'
import { InvalidKeyError } from '../errors.ts'

/** The two curves atproto signs with. */
export type KeyType = 'k256' | 'p256'

/** A public key on one of atproto's curves. */
export interface PublicKey {
  type: KeyType
  /** 33-byte SEC1 compressed point, checked to be on the curve. */
  compressed: Uint8Array
}

/** Verification method types of the legacy DID-document key form (raw key bytes). */
export type LegacyKeySuite = 'EcdsaSecp256k1VerificationKey2019' | 'EcdsaSecp256r1VerificationKey2019'

const DID_KEY_PREFIX = 'did:key:'

// Multicodec codes of the key types (secp256k1-pub, p256-pub), and back.
const MULTICODEC: Record<KeyType, number> = { k256: 0xe7, p256: 0x1200 }
const KEY_TYPES = new Map<number, KeyType>([[0xe7, 'k256'], [0x1200, 'p256']])

const CURVES = { k256: secp256k1, p256 }

const LEGACY_SUITES: Record<LegacyKeySuite, KeyType> = {
  EcdsaSecp256k1VerificationKey2019: 'k256',
  EcdsaSecp256r1VerificationKey2019: 'p256'
}

// DER SubjectPublicKeyInfo up to the BIT STRING's content, for a 33-byte
// compressed point: SEQUENCE { SEQUENCE { id-ecPublicKey, the curve's OID }, BIT STRING }
const SPKI_PREFIX: Record<KeyType, Uint8Array> = {
  // secp256k1: 1.3.132.0.10
  k256: Uint8Array.from([0x30, 0x36, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a, 0x03, 0x22, 0x00]),
  // prime256v1: 1.2.840.10045.3.1.7
  p256: Uint8Array.from([0x30, 0x39, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x22, 0x00])
}

/** Half of each curve's group order: a signature's `s` above it is high-S. */
const HALF_ORDER: Record<KeyType, bigint> = { k256: secp256k1.Point.Fn.ORDER >> 1n, p256: p256.Point.Fn.ORDER >> 1n }

/** OpenSSL's form of each key, made on its first check. */
const keyObjects = new WeakMap<PublicKey, KeyObject>()

/**
 * Makes a {@link PublicKey} from SEC1 point bytes, compressed (33) or
 * uncompressed (65); throws {@link InvalidKeyError} unless the point is on `type`'s curve.
 */
export function publicKeyFromBytes (type: KeyType, bytes: Uint8Array): PublicKey {
  const curve = CURVES[type]
  if (curve === undefined) throw new InvalidKeyError(`unsupported key type ${String(type)}`)
  if (bytes.length !== 33 && bytes.length !== 65) {
    throw new InvalidKeyError(`${type} public key is ${bytes.length} bytes, want 33 (compressed) or 65 (uncompressed)`)
  }
  try {
    return { type, compressed: curve.Point.fromBytes(bytes).toBytes(true) }
  } catch (err) {
    throw new InvalidKeyError(`not a point on the ${type} curve`, {}, { cause: err })
  }
}

/**
 * Parses a `did:key:z…` string (Multikey: multicodec-prefixed compressed key,
 * base58btc) into a {@link PublicKey}. Throws {@link InvalidKeyError}.
 */
export function parseDidKey (didKey: string): PublicKey {
  if (typeof didKey !== 'string' || !didKey.startsWith(DID_KEY_PREFIX)) {
    throw new InvalidKeyError('not a did:key', { key: String(didKey).slice(0, 100) })
  }
  return parseMultikey(didKey.slice(DID_KEY_PREFIX.length), didKey)
}

/**
 * Parses a DID document's `publicKeyMultibase`. Without `legacyType` it is the
 * `Multikey` form (multicodec-prefixed compressed key, as in `did:key`). With a
 * legacy suite name it is the older form: base58btc of the raw key bytes,
 * compressed or uncompressed, with the curve given by the suite.
 */
export function parsePublicKeyMultibase (multibase: string, legacyType?: LegacyKeySuite): PublicKey {
  if (legacyType === undefined) return parseMultikey(multibase, multibase)
  const type = LEGACY_SUITES[legacyType]
  if (type === undefined) throw new InvalidKeyError(`unsupported verification method type ${String(legacyType)}`)
  return publicKeyFromBytes(type, decodeBase58btc(multibase, multibase))
}

/** The `did:key` of a public key (Multikey, compressed). */
export function formatDidKey (key: PublicKey): string {
  return DID_KEY_PREFIX + publicKeyMultibase(key)
}

/** The Multikey `publicKeyMultibase` of a public key (`z` + base58btc of multicodec + compressed key). */
export function publicKeyMultibase (key: PublicKey): string {
  const code = MULTICODEC[key.type]
  if (code === undefined) throw new InvalidKeyError(`unsupported key type ${String(key.type)}`)
  if (key.compressed.length !== 33) throw new InvalidKeyError(`compressed ${key.type} key is ${key.compressed.length} bytes, want 33`)
  const prefixLength = varint.encodingLength(code)
  const bytes = new Uint8Array(prefixLength + 33)
  varint.encodeTo(code, bytes)
  bytes.set(key.compressed, prefixLength)
  return base58btc.encode(bytes)
}

/** The 65-byte uncompressed SEC1 point of a key (what legacy DID documents carry). */
export function publicKeyUncompressed (key: PublicKey): Uint8Array {
  const curve = CURVES[key.type]
  if (curve === undefined) throw new InvalidKeyError(`unsupported key type ${String(key.type)}`)
  return curve.Point.fromBytes(key.compressed).toBytes(false)
}

/** Whether two public keys are the same key. */
export function publicKeyEquals (a: PublicKey, b: PublicKey): boolean {
  return a.type === b.type && Buffer.from(a.compressed).equals(b.compressed)
}

/**
 * Whether `sig` is a valid atproto signature of `data` by `key`: ECDSA over
 * SHA-256(`data`), 64-byte compact `r || s` only (DER is not accepted), and
 * low-S only on both curves (a high-S twin of a valid signature is rejected,
 * so signatures are not malleable). A malformed signature is just invalid
 * (`false`); a malformed key throws {@link InvalidKeyError}.
 */
export function verifySignature (key: PublicKey, data: Uint8Array, sig: Uint8Array): boolean {
  const object = keyObject(key)
  if (!(sig instanceof Uint8Array) || sig.length !== 64) return false
  if (bigEndian(sig.subarray(32)) > HALF_ORDER[key.type]) return false
  return verify('sha256', data, { key: object, dsaEncoding: 'ieee-p1363' }, sig)
}

function keyObject (key: PublicKey): KeyObject {
  let object = keyObjects.get(key)
  if (object !== undefined) return object
  const prefix = SPKI_PREFIX[key.type]
  if (prefix === undefined) throw new InvalidKeyError(`unsupported key type ${String(key.type)}`)
  if (!(key.compressed instanceof Uint8Array) || key.compressed.length !== 33) {
    throw new InvalidKeyError(`compressed ${key.type} key must be 33 bytes`)
  }
  const der = new Uint8Array(prefix.length + 33)
  der.set(prefix)
  der.set(key.compressed, prefix.length)
  try {
    object = createPublicKey({ key: Buffer.from(der.buffer), format: 'der', type: 'spki' })
  } catch (err) {
    throw new InvalidKeyError(`not a point on the ${key.type} curve`, {}, { cause: err })
  }
  keyObjects.set(key, object)
  return object
}

function bigEndian (bytes: Uint8Array): bigint {
  return BigInt('0x' + Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex'))
}

function parseMultikey (multibase: string, original: string): PublicKey {
  const bytes = decodeBase58btc(multibase, original)
  let code: number | undefined
  let prefixLength = 0
  try {
    [code, prefixLength] = varint.decode(bytes)
  } catch {}
  const type = code === undefined ? undefined : KEY_TYPES.get(code)
  if (type === undefined) {
    throw new InvalidKeyError('unsupported multicodec (want secp256k1-pub 0xe7 or p256-pub 0x1200)', { key: original.slice(0, 100) })
  }
  const key = bytes.subarray(prefixLength)
  if (key.length !== 33) {
    throw new InvalidKeyError(`${type} Multikey must hold a 33-byte compressed key, got ${key.length} bytes`, { key: original.slice(0, 100) })
  }
  return publicKeyFromBytes(type, key)
}

function decodeBase58btc (multibase: string, original: string): Uint8Array {
  if (typeof multibase !== 'string' || !multibase.startsWith('z')) {
    throw new InvalidKeyError('not a base58btc multibase string (want a "z" prefix)', { key: String(original).slice(0, 100) })
  }
  if (multibase.length > 200) throw new InvalidKeyError('multibase key too long', { key: original.slice(0, 100) })
  try {
    return base58btc.decode(multibase)
  } catch (err) {
    throw new InvalidKeyError('invalid base58btc', { key: original.slice(0, 100) }, { cause: err })
  }
}
