/**
 * CIDs as atproto repositories use them: CIDv1, sha2-256, DAG-CBOR (0x71) for
 * commits, MST nodes and records, raw (0x55) for blobs.
 */
import { hash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { CidMismatchError, UnsupportedCidError } from '../errors.ts'

export { CID }

/** Multicodec code of DAG-CBOR. */
export const DAG_CBOR = 0x71
/** Multicodec code of raw bytes (blobs). */
export const RAW = 0x55
/** Multihash code of sha2-256. */
export const SHA2_256 = 0x12

/** SHA-256 of `bytes`, synchronously (node's native one-shot hash: no Hash object per block). */
export function sha256 (bytes: Uint8Array): Uint8Array {
  const digest = hash('sha256', bytes, 'buffer')
  // A plain Uint8Array view, so CIDs built on it compare and print like any other.
  return new Uint8Array(digest.buffer, digest.byteOffset, digest.byteLength)
}

/** The CIDv1 (sha2-256) of `bytes` under `codec` (DAG-CBOR unless told). */
export function cidForBytes (bytes: Uint8Array, codec: number = DAG_CBOR): CID {
  return CID.createV1(codec, Digest.create(SHA2_256, sha256(bytes)))
}

/**
 * Throws {@link UnsupportedCidError} unless `cid` is a CIDv1 with sha2-256 and a
 * DAG-CBOR or raw codec (the only CIDs the repository spec allows).
 */
export function assertSupportedCid (cid: CID): void {
  if (cid.version !== 1) throw new UnsupportedCidError(cid, `version ${cid.version}, want 1`)
  if (cid.code !== DAG_CBOR && cid.code !== RAW) throw new UnsupportedCidError(cid, `codec 0x${cid.code.toString(16)}, want 0x71 or 0x55`)
  if (cid.multihash.code !== SHA2_256) throw new UnsupportedCidError(cid, `hash 0x${cid.multihash.code.toString(16)}, want sha2-256`)
  if (cid.multihash.size !== 32) throw new UnsupportedCidError(cid, `digest length ${cid.multihash.size}, want 32`)
}

/**
 * Checks that `bytes` hash to `cid`: throws {@link UnsupportedCidError} for a CID
 * atproto does not use and {@link CidMismatchError} when the digest differs.
 */
export function verifyBlock (cid: CID, bytes: Uint8Array): void {
  assertSupportedCid(cid)
  const digest = sha256(bytes)
  const expected = cid.multihash.digest
  for (let i = 0; i < 32; i++) {
    if (digest[i] !== expected[i]) {
      throw new CidMismatchError(cid, CID.createV1(cid.code, Digest.create(SHA2_256, digest)))
    }
  }
}

/** Parses a CID string, naming it in the error when it is not one atproto uses. */
export function parseCid (text: string): CID {
  let cid: CID
  try {
    cid = CID.parse(text)
  } catch (err) {
    throw new UnsupportedCidError(text, `not a CID (${(err as Error).message})`)
  }
  assertSupportedCid(cid)
  return cid
}

/**
 * A compact map key for a CID: its multihash bytes as a latin1 string. Much
 * cheaper than `cid.toString()` (base32) on hot paths such as a 20k-block CAR.
 * Codec is left out on purpose: the same bytes are the same block.
 */
export function cidKey (cid: CID): string {
  return Buffer.from(cid.multihash.bytes.buffer, cid.multihash.bytes.byteOffset, cid.multihash.bytes.byteLength).toString('latin1')
}

/** Reads a CID-like value from decoded CBOR, or `null` if it is not one. */
export function asCid (value: unknown): CID | null {
  return CID.asCID(value) ?? null
}
