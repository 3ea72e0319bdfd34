/**
 * Repository commits (atproto.com/specs/repository#commit-objects): the signed
 * object at the top of a repo that names the account (`did`), the MST root
 * (`data`) and the revision (`rev`).
 *
 * Decoding is strict. A v3 commit has exactly the fields `did`, `version`, `data`,
 * `rev`, `prev` and `sig`, and any other field is rejected: the spec defines the
 * object with a fixed schema and a `version`, and the reference implementations
 * drop unknown fields when they rebuild the unsigned commit to check the
 * signature, so an extra field would be data that one implementation signs and
 * another does not. A new field comes with a new version. `prev` must be
 * present (nullable): the spec made it non-optional in v3 after optional `prev`
 * caused interoperability problems.
 */
import { CommitInvalidError, CommitSignatureError, UnsupportedCidError, type CidLike } from '../errors.ts'
import { decodeCbor, encodeCbor } from './cbor.ts'
import { CID, DAG_CBOR, SHA2_256 } from './cid.ts'
import { verifySignature, type PublicKey } from './keys.ts'
import { isValidDid, isValidTid } from './syntax.ts'

/** A signed v3 repository commit. */
export interface Commit {
  did: string
  version: 3
  /** Root of the repo's MST. */
  data: CID
  /** Revision, a TID; increases with every commit. */
  rev: string
  /** Previous commit; virtually always `null` in v3 but always present. */
  prev: CID | null
  /** 64-byte compact ECDSA signature over {@link unsignedCommitBytes}. */
  sig: Uint8Array
}

/** A commit before signing (every field but `sig`). */
export type UnsignedCommit = Omit<Commit, 'sig'>

const FIELDS = new Set(['did', 'version', 'data', 'rev', 'prev', 'sig'])

/**
 * Throws {@link UnsupportedCidError} unless `cid` can name a commit: a CIDv1 with
 * the DAG-CBOR codec and a sha2-256 digest. The repository spec asks for the
 * DRISL ("not raw") codec for commit CIDs; a raw CID of a commit's bytes hashes
 * the same, so without this check it would pass for the commit.
 */
export function assertCommitCid (cid: CID): void {
  if (!isRepoCid(cid)) {
    const got = cid.version !== 1 ? `CIDv${cid.version}` : cid.code !== DAG_CBOR ? `codec 0x${cid.code.toString(16)}` : `hash 0x${cid.multihash.code.toString(16)} of ${cid.multihash.size} bytes`
    throw new UnsupportedCidError(cid, `a commit is named by a CIDv1 with the DAG-CBOR codec (0x71) and sha2-256, not ${got}`)
  }
}

/**
 * Decodes and checks a commit block. `cid`, when given, must be a commit CID
 * ({@link assertCommitCid}) and is named in errors; the caller has already
 * checked the block's bytes against it. Throws {@link CborDecodeError} for
 * bytes that are not DRISL and {@link CommitInvalidError} for a wrong shape.
 */
export function decodeCommit (bytes: Uint8Array, cid?: CID): Commit {
  if (cid !== undefined) assertCommitCid(cid)
  const value = decodeCbor<unknown>(bytes, { cid })
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array || CID.asCID(value) !== null) {
    throw new CommitInvalidError('not a map', { cid })
  }
  const obj = value as Record<string, unknown>
  // Pick up did/rev first so every later error can name them.
  const did = typeof obj.did === 'string' ? obj.did : undefined
  const rev = typeof obj.rev === 'string' ? obj.rev : undefined
  const fail = (reason: string): never => { throw new CommitInvalidError(reason, { cid, did: did?.slice(0, 256), rev: rev?.slice(0, 64) }) }

  for (const key of Object.keys(obj)) {
    if (!FIELDS.has(key)) fail(`unexpected field ${JSON.stringify(key.slice(0, 64))}`)
  }
  for (const key of FIELDS) {
    if (!Object.hasOwn(obj, key)) fail(`missing field ${key}`)
  }
  if (obj.version !== 3) fail(`version is ${describeValue(obj.version)}, want 3`)
  if (did === undefined) fail(`did is ${describeValue(obj.did)}, want a string`)
  if (!isValidDid(did)) fail('did is not a valid DID')
  if (rev === undefined) fail(`rev is ${describeValue(obj.rev)}, want a string`)
  if (!isValidTid(rev)) fail('rev is not a valid TID')
  const data = CID.asCID(obj.data)
  if (data === null) fail(`data is ${describeValue(obj.data)}, want a CID link`)
  if (!isRepoCid(data as CID)) fail(`data ${String(data)} is not a CIDv1 DAG-CBOR sha2-256 link`)
  let prev: CID | null = null
  if (obj.prev !== null) {
    prev = CID.asCID(obj.prev)
    if (prev === null) fail(`prev is ${describeValue(obj.prev)}, want a CID link or null`)
    if (!isRepoCid(prev as CID)) fail(`prev ${String(prev)} is not a CIDv1 DAG-CBOR sha2-256 link`)
  }
  const sig = obj.sig
  if (!(sig instanceof Uint8Array)) fail(`sig is ${describeValue(sig)}, want bytes`)
  if ((sig as Uint8Array).length !== 64) fail(`sig is ${(sig as Uint8Array).length} bytes, want 64`)

  return { did: did as string, version: 3, data: data as CID, rev: rev as string, prev, sig: sig as Uint8Array }
}

/**
 * The bytes a commit's signature covers: the DRISL encoding of the commit
 * without `sig` (only the five v3 fields, whatever else the object carries).
 */
export function unsignedCommitBytes (commit: UnsignedCommit): Uint8Array {
  return encodeCbor({ did: commit.did, version: commit.version, data: commit.data, rev: commit.rev, prev: commit.prev })
}

/** The DRISL encoding of a signed commit (its block bytes). */
export function encodeCommit (commit: Commit): Uint8Array {
  return encodeCbor({ did: commit.did, version: commit.version, data: commit.data, rev: commit.rev, prev: commit.prev, sig: commit.sig })
}

/**
 * Checks the commit's signature against the account's signing key; throws
 * {@link CommitSignatureError} naming `did`, `rev` and `cid` when it does not
 * verify. A malformed `key` throws {@link InvalidKeyError}.
 */
export function verifyCommitSignature (commit: Commit, key: PublicKey, init: { cid?: CidLike } = {}): void {
  if (!verifySignature(key, unsignedCommitBytes(commit), commit.sig)) {
    throw new CommitSignatureError({ did: commit.did, rev: commit.rev, cid: init.cid, reason: `not signed by the ${key.type} key` })
  }
}

function isRepoCid (cid: CID): boolean {
  return cid.version === 1 && cid.code === DAG_CBOR && cid.multihash.code === SHA2_256 && cid.multihash.size === 32
}

function describeValue (value: unknown): string {
  if (value === null) return 'null'
  if (value instanceof Uint8Array) return `${value.length} bytes`
  if (CID.asCID(value) !== null) return 'a CID link'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'string') return `a string ${JSON.stringify(value.slice(0, 64))}`
  if (typeof value === 'object') return 'a map'
  return `${typeof value} ${String(value)}`
}
