/**
 * DID → libp2p PeerID: the PeerID of the DID's `#atproto` signing key, as libp2p
 * would derive it for a node holding that key (libp2p/specs peer-ids.md). No node
 * holds it — the private key stays with the PDS — so it names the account in
 * libp2p terms; it is not a peer you can dial, and it changes when the key
 * rotates. Mirrors find each other through {@link rendezvousCid} instead.
 *
 * One definition, used by both the key object and the PeerID:
 * `multihash(protobuf PublicKey { Type, Data })`, identity when the protobuf is at
 * most 42 bytes, sha2-256 otherwise.
 *
 * - secp256k1: `Data` = the 33-byte compressed key; 37 bytes, identity multihash:
 *   `16Uiu2…` PeerIDs. js-libp2p derives exactly this, so its own key and PeerId
 *   objects are used.
 * - P-256: `Data` = the DER SubjectPublicKeyInfo (the encoding go-libp2p and
 *   rust-libp2p use); 95 bytes, sha2-256 multihash: `Qm…` PeerIDs. js-libp2p
 *   (`@libp2p/peer-id` 6, `@libp2p/crypto` 5) cannot be used here:
 *   `peerIdFromPublicKey` throws UnsupportedKeyTypeError for ECDSA keys, and its
 *   ECDSA key serialises `Data` in its own DER layout (not SubjectPublicKeyInfo)
 *   and identity-hashes the 91-byte result against the 42-byte rule. So the P-256
 *   key and PeerId objects are built here, in js-libp2p's shapes, with `type`
 *   `'ECDSA'` and the key as `publicKey`.
 */
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdSymbol, type ECDSAPublicKey, type Secp256k1PeerId, type Secp256k1PublicKey } from '@libp2p/interface'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { p256 } from '@noble/curves/nist.js'
import { base58btc } from 'multiformats/bases/base58'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import type { MultihashDigest } from 'multiformats/hashes/interface'
import { InvalidKeyError } from '../errors.ts'
import { SHA2_256, sha256 } from '../repo/cid.ts'
import type { PublicKey } from '../repo/keys.ts'
import type { IdentityResolver } from './resolver.ts'

/** A P-256 key as a js-libp2p-shaped ECDSA public key whose multihash follows the spec (sha2-256). */
export interface EcdsaP256PublicKey extends Omit<ECDSAPublicKey, 'toMultihash' | 'toCID'> {
  /** The DER SubjectPublicKeyInfo. */
  readonly raw: Uint8Array
  toMultihash: () => MultihashDigest<0x12>
  toCID: () => CID<unknown, 0x72, 0x12, 1>
}

/** The PeerID of a P-256 key, shaped like js-libp2p's PeerIds. */
export interface EcdsaPeerId {
  readonly type: 'ECDSA'
  readonly publicKey: EcdsaP256PublicKey
  toString: () => string
  toMultihash: () => MultihashDigest<0x12>
  toCID: () => CID<Uint8Array, 0x72, 0x12, 1>
  toJSON: () => string
  equals: (other?: unknown) => boolean
}

/** What {@link peerIdForKey} returns: js-libp2p's for secp256k1, {@link EcdsaPeerId} for P-256. */
export type AtprotoPeerId = Secp256k1PeerId | EcdsaPeerId

/** A js-libp2p key object for an atproto signing key. */
export type AtprotoLibp2pPublicKey = Secp256k1PublicKey | EcdsaP256PublicKey

/** libp2p-key multicodec (PeerIDs as CIDs). */
const LIBP2P_KEY = 0x72
/** The peer-ids spec inlines (identity multihash) protobufs up to this length. */
const MAX_INLINE_KEY_LENGTH = 42

// SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }
const P256_SPKI_PREFIX = Uint8Array.from([
  0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
  0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00
])
// js-libp2p's own ECDSA public key structure: SEQUENCE { INTEGER 1, [0] { prime256v1 }, [1] { BIT STRING } };
// only used to have js-libp2p build its key object (for `jwk` and `verify`).
const P256_JS_LIBP2P_PREFIX = Uint8Array.from([
  0x30, 0x55, 0x02, 0x01, 0x01, 0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01,
  0x07, 0xa1, 0x44, 0x03, 0x42, 0x00
])
// protobuf PublicKey: field 1 (Type) varint, field 2 (Data) length-delimited
const TYPE_SECP256K1 = 2
const TYPE_ECDSA = 3

/** The uncompressed (65-byte) form of a P-256 key. */
function uncompressedP256 (key: PublicKey): Uint8Array {
  try {
    return p256.Point.fromBytes(key.compressed).toBytes(false)
  } catch (err) {
    throw new InvalidKeyError('not a P-256 point', {}, { cause: err })
  }
}

/** The `Data` field: compressed point (secp256k1) or SubjectPublicKeyInfo (P-256). */
function keyData (key: PublicKey): Uint8Array {
  if (key.type === 'k256') return key.compressed
  if (key.type === 'p256') return concat(P256_SPKI_PREFIX, uncompressedP256(key))
  throw new InvalidKeyError(`unsupported key type ${JSON.stringify((key as { type: unknown }).type)}`)
}

/** The protobuf-encoded public key a libp2p PeerID is derived from. */
export function libp2pPublicKeyProtobuf (key: PublicKey): Uint8Array {
  const data = keyData(key)
  // Both Data fields are < 128 bytes: a one-byte length.
  return concat(Uint8Array.from([0x08, key.type === 'k256' ? TYPE_SECP256K1 : TYPE_ECDSA, 0x12, data.byteLength]), data)
}

/** The PeerID multihash of a protobuf-encoded public key (the spec's 42-byte rule). */
export function peerIdMultihash (protobuf: Uint8Array): MultihashDigest {
  if (protobuf.byteLength <= MAX_INLINE_KEY_LENGTH) return Digest.create(0x00, protobuf)
  return Digest.create(SHA2_256, sha256(protobuf))
}

/** The key as a js-libp2p public key object (js-libp2p's secp256k1 key, or {@link EcdsaP256PublicKey}). */
export function libp2pPublicKey (key: PublicKey): AtprotoLibp2pPublicKey {
  if (key.type === 'k256') {
    try {
      return publicKeyFromRaw(key.compressed) as Secp256k1PublicKey
    } catch (err) {
      throw new InvalidKeyError('libp2p rejects the k256 key', {}, { cause: err })
    }
  }
  if (key.type === 'p256') return new P256PublicKey(uncompressedP256(key))
  throw new InvalidKeyError(`unsupported key type ${JSON.stringify((key as { type: unknown }).type)}`)
}

/** The PeerID of an atproto signing key (see the module docs for what it is not). */
export function peerIdForKey (key: PublicKey): AtprotoPeerId {
  const libp2pKey = libp2pPublicKey(key)
  if (libp2pKey.type === 'secp256k1') return peerIdFromPublicKey(libp2pKey)
  return new P256PeerId(libp2pKey)
}

/** The PeerID of the DID's current `#atproto` key. */
export async function peerIdForDid (did: string, identity: IdentityResolver, options: { signal?: AbortSignal } = {}): Promise<AtprotoPeerId> {
  const { signingKey } = await identity.resolve(did, { signal: options.signal, verifyHandle: false })
  return peerIdForKey(signingKey)
}

class P256PublicKey implements EcdsaP256PublicKey {
  readonly type = 'ECDSA' as const
  readonly raw: Uint8Array
  readonly jwk: JsonWebKey
  readonly #libp2p: ECDSAPublicKey
  readonly #multihash: MultihashDigest<0x12>

  constructor (uncompressed: Uint8Array) {
    try {
      this.#libp2p = publicKeyFromRaw(concat(P256_JS_LIBP2P_PREFIX, uncompressed)) as ECDSAPublicKey
    } catch (err) {
      throw new InvalidKeyError('libp2p rejects the p256 key', {}, { cause: err })
    }
    this.raw = concat(P256_SPKI_PREFIX, uncompressed)
    this.jwk = this.#libp2p.jwk
    const protobuf = concat(Uint8Array.from([0x08, TYPE_ECDSA, 0x12, this.raw.byteLength]), this.raw)
    this.#multihash = peerIdMultihash(protobuf) as MultihashDigest<0x12>
  }

  toMultihash (): MultihashDigest<0x12> {
    return this.#multihash
  }

  toCID (): CID<unknown, 0x72, 0x12, 1> {
    return CID.createV1(LIBP2P_KEY, this.#multihash)
  }

  toString (): string {
    return base58btc.encode(this.#multihash.bytes).slice(1)
  }

  /** Same curve point (whatever DER layout the other key object keeps in `raw`). */
  equals (key?: any): boolean {
    const jwk = (key as { type?: unknown, jwk?: JsonWebKey } | undefined)?.jwk
    if ((key as { type?: unknown } | undefined)?.type !== 'ECDSA' || jwk === undefined) return false
    return jwk.crv === this.jwk.crv && jwk.x === this.jwk.x && jwk.y === this.jwk.y
  }

  /** js-libp2p's ECDSA verification (SHA-256, DER signature), not atproto's compact one. */
  verify (data: Parameters<ECDSAPublicKey['verify']>[0], sig: Uint8Array, options?: Parameters<ECDSAPublicKey['verify']>[2]): boolean | Promise<boolean> {
    return this.#libp2p.verify(data, sig, options)
  }
}

class P256PeerId implements EcdsaPeerId {
  readonly type = 'ECDSA' as const
  readonly publicKey: EcdsaP256PublicKey
  readonly [peerIdSymbol] = true
  readonly #string: string

  constructor (publicKey: EcdsaP256PublicKey) {
    this.publicKey = publicKey
    this.#string = publicKey.toString()
  }

  toString (): string {
    return this.#string
  }

  toMultihash (): MultihashDigest<0x12> {
    return this.publicKey.toMultihash()
  }

  toCID (): CID<Uint8Array, 0x72, 0x12, 1> {
    return CID.createV1(LIBP2P_KEY, this.publicKey.toMultihash())
  }

  toJSON (): string {
    return this.#string
  }

  /** Like js-libp2p's PeerIds: equal multihash, given as a PeerId, its bytes or its string. */
  equals (other?: unknown): boolean {
    if (other === null || other === undefined) return false
    if (other instanceof Uint8Array) return bytesEqual(this.toMultihash().bytes, other)
    if (typeof other === 'string') return other === this.#string
    const multihash = (other as { toMultihash?: () => MultihashDigest }).toMultihash?.()
    return multihash !== undefined && bytesEqual(this.toMultihash().bytes, multihash.bytes)
  }

  get [Symbol.toStringTag] (): string {
    return `PeerId(${this.#string})`
  }

  [Symbol.for('nodejs.util.inspect.custom')] (): string {
    return `PeerId(${this.#string})`
  }
}

function bytesEqual (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((byte, i) => byte === b[i])
}

function concat (...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.byteLength
  }
  return out
}
