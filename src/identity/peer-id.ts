/**
 * DID → libp2p PeerID: the PeerID of the DID's `#atproto` signing key, as libp2p
 * would derive it for a node holding that key (libp2p/specs peer-ids.md). No node
 * holds it — the private key stays with the PDS — so it names the account in
 * libp2p terms; it is not a peer you can dial, and it changes when the key
 * rotates. Mirrors find each other through {@link rendezvousCid} instead.
 *
 * - secp256k1: protobuf `{ Type: Secp256k1, Data: 33-byte compressed key }` is 37
 *   bytes, so the multihash is the identity: `16Uiu2…` PeerIDs.
 * - P-256: protobuf `{ Type: ECDSA, Data: DER SubjectPublicKeyInfo }` (the
 *   encoding go-libp2p and rust-libp2p use) is 95 bytes, so the multihash is
 *   sha2-256: `Qm…` PeerIDs. js-libp2p has no ECDSA PeerId class: the object
 *   returned is the generic sha2-256 kind (its `type` reads `'RSA'` and it carries
 *   no public key); its string, multihash and CID are right.
 */
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import type { PeerId, PublicKey as Libp2pPublicKey } from '@libp2p/interface'
import { peerIdFromMultihash, peerIdFromPublicKey } from '@libp2p/peer-id'
import { p256 } from '@noble/curves/nist.js'
import * as Digest from 'multiformats/hashes/digest'
import { InvalidKeyError } from '../errors.ts'
import { SHA2_256, sha256 } from '../repo/cid.ts'
import type { PublicKey } from '../repo/keys.ts'
import type { IdentityResolver } from './resolver.ts'

// SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }
const P256_SPKI_PREFIX = Uint8Array.from([
  0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
  0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00
])
// js-libp2p's own ECDSA public key structure: SEQUENCE { INTEGER 1, [0] { prime256v1 }, [1] { BIT STRING } }
const P256_JS_LIBP2P_PREFIX = Uint8Array.from([
  0x30, 0x55, 0x02, 0x01, 0x01, 0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01,
  0x07, 0xa1, 0x44, 0x03, 0x42, 0x00
])
// protobuf PublicKey: field 1 (Type) = 3 (ECDSA), field 2 (Data) length-prefixed
const ECDSA_PROTOBUF_TYPE = Uint8Array.from([0x08, 0x03, 0x12])

/** The uncompressed (65-byte) form of a P-256 key. */
function uncompressedP256 (key: PublicKey): Uint8Array {
  try {
    return p256.Point.fromBytes(key.compressed).toBytes(false)
  } catch (err) {
    throw new InvalidKeyError('not a P-256 point', {}, { cause: err })
  }
}

/** The key as a libp2p public key object (secp256k1, or js-libp2p's ECDSA). */
export function libp2pPublicKey (key: PublicKey): Libp2pPublicKey {
  try {
    if (key.type === 'k256') return publicKeyFromRaw(key.compressed)
    if (key.type === 'p256') return publicKeyFromRaw(concat(P256_JS_LIBP2P_PREFIX, uncompressedP256(key)))
  } catch (err) {
    if (err instanceof InvalidKeyError) throw err
    throw new InvalidKeyError(`libp2p rejects the ${key.type} key`, {}, { cause: err })
  }
  throw new InvalidKeyError(`unsupported key type ${JSON.stringify((key as { type: unknown }).type)}`)
}

/** The protobuf-encoded public key a libp2p PeerID is derived from. */
export function libp2pPublicKeyProtobuf (key: PublicKey): Uint8Array {
  if (key.type === 'k256') return concat(Uint8Array.from([0x08, 0x02, 0x12, key.compressed.byteLength]), key.compressed)
  if (key.type === 'p256') {
    const spki = concat(P256_SPKI_PREFIX, uncompressedP256(key))
    return concat(ECDSA_PROTOBUF_TYPE, Uint8Array.from([spki.byteLength]), spki)
  }
  throw new InvalidKeyError(`unsupported key type ${JSON.stringify((key as { type: unknown }).type)}`)
}

/** The PeerID of an atproto signing key (see the module docs for what it is not). */
export function peerIdForKey (key: PublicKey): PeerId {
  if (key.type === 'k256') {
    try {
      return peerIdFromPublicKey(publicKeyFromRaw(key.compressed))
    } catch (err) {
      throw new InvalidKeyError('libp2p rejects the k256 key', {}, { cause: err })
    }
  }
  const protobuf = libp2pPublicKeyProtobuf(key)
  // Longer than 42 bytes: the spec hashes instead of inlining.
  return peerIdFromMultihash(Digest.create(SHA2_256, sha256(protobuf)))
}

/** The PeerID of the DID's current `#atproto` key. */
export async function peerIdForDid (did: string, identity: IdentityResolver, options: { signal?: AbortSignal } = {}): Promise<PeerId> {
  const { signingKey } = await identity.resolve(did, { signal: options.signal, verifyHandle: false })
  return peerIdForKey(signingKey)
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
