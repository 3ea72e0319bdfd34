/**
 * Whole-repository verification: a CAR (or a block store) holds a complete repo
 * whose commit is well formed, is for the expected DID, is signed by its key, and
 * whose MST is structurally sound and complete down to every record block.
 *
 * This is what the rest of atmirror trusts, so it checks everything it can and
 * says exactly what failed; it is also on the hot path of every full sync, so it
 * keeps per-block work to one map lookup and one hash.
 */
import { CommitDidMismatchError, CarParseError, CborDecodeError, MissingBlockError, RepoVerificationError, UnsupportedCidError } from '../errors.ts'
import type { ReadonlyBlockStore, BlockStoreOptions } from './block-store.ts'
import { readCar } from './car.ts'
import { CarBlocks } from './car-blocks.ts'
import { checkDrisl, startsWithMap } from './cbor.ts'
import { DAG_CBOR, SHA2_256, cidKey, verifyBlock, type CID } from './cid.ts'
import { assertCommitCid, decodeCommit, verifyCommitSignature, type Commit } from './commit.ts'
import type { PublicKey } from './keys.ts'
import type { RepoLogger } from './log.ts'
import { isPromise } from './mst/check.ts'
import { walkMstBatches } from './mst/walk.ts'

export { CarBlocks }

/** What a verified repository holds. */
export interface RepoSummary {
  did: string
  rev: string
  /** CID of the signed commit. */
  commit: CID
  /** CID of the MST root (the commit's `data`). */
  data: CID
  /** Number of records (MST leaves). */
  records: number
  /** Distinct blocks the repo consists of: the commit, every MST node and every distinct record block. */
  blocks: number
  /** Total size of those blocks in bytes. */
  bytes: number
  /** `'verified'` when a key was given and the signature holds; `'unchecked'` when no key was given. */
  signature: 'verified' | 'unchecked'
}

/** {@link RepoSummary} plus what the CAR held beyond the repo. */
export interface RepoCarSummary extends RepoSummary {
  /** Size of the CAR as read, in bytes. */
  carBytes: number
  /** Distinct blocks in the CAR (duplicates counted once). */
  carBlocks: number
  /** Blocks in the CAR that the commit does not reach (allowed, but counted). */
  unreachableBlocks: number
}

/** Progress while verifying: reading the CAR, then walking the tree. */
export type VerifyProgressEvent =
  | { type: 'read', blocks: number, bytes: number }
  | { type: 'walk', records: number, blocks: number }

/**
 * How record blocks are checked. Every record block is always present, DAG-CBOR
 * by CID codec and hash-checked (by the CAR reader, or here for stores);
 * - `'decode'`: also decoded as strict DRISL (the library's strict decode, exact
 *   UTF-8, no floats, integers within 64 bits) and required to be a map. Map key
 *   order is not checked and links inside the record may be any CID: the
 *   repository spec allows "more flexibility" for records than for commits and
 *   MST nodes (see ./cbor.ts for the reasoning and the spec's words);
 * - `'hash'`: only required to start with a CBOR map header.
 */
export type RecordCheck = 'decode' | 'hash'

export interface VerifyRepoOptions {
  /** Fail with CommitDidMismatchError unless the commit is for this DID. */
  did?: string
  /** Verify the commit signature with this key; without it the summary says `'unchecked'`. */
  key?: PublicKey
  signal?: AbortSignal
  onProgress?: (event: VerifyProgressEvent) => void
  /** How record blocks are checked. @default 'decode' */
  records?: RecordCheck
  /** Called for every record in MST order, after it has been checked. */
  onRecord?: (rpath: string, cid: CID) => void
  /** Debug logger (see ./log.ts). @default none */
  log?: RepoLogger
}

export interface VerifyStoreOptions extends VerifyRepoOptions {
  /**
   * The store's blocks were hash-checked when they were stored, so reading them
   * back need not hash them again. @default false
   */
  trusted?: boolean
}

/** How often progress is reported (blocks or records). */
const PROGRESS_EVERY = 1000

/** A read-through view of a store that remembers which blocks the walk touched. */
interface TouchingStore extends ReadonlyBlockStore {
  /** Distinct blocks read so far. */
  readonly touched: number
  /** Their total size. */
  readonly touchedBytes: number
}

/** Wraps any store: hash-checks what it reads (unless trusted) and counts distinct blocks. */
export class CheckingStore implements TouchingStore {
  readonly #inner: ReadonlyBlockStore
  readonly #trusted: boolean
  readonly #seen = new Set<string>()
  touched = 0
  touchedBytes = 0

  constructor (inner: ReadonlyBlockStore, trusted: boolean) {
    this.#inner = inner
    this.#trusted = trusted
  }

  get (cid: CID, options?: BlockStoreOptions): Promise<Uint8Array | undefined> | Uint8Array | undefined {
    const answer = this.#inner.get(cid, options)
    // stay synchronous for a synchronous store: the walker then needs no promises
    return isPromise(answer) ? answer.then(bytes => this.#check(cid, bytes)) : this.#check(cid, answer)
  }

  #check (cid: CID, bytes: Uint8Array | undefined): Uint8Array | undefined {
    if (bytes === undefined) return undefined
    const key = cidKey(cid)
    if (!this.#seen.has(key)) {
      if (!this.#trusted) verifyBlock(cid, bytes)
      this.#seen.add(key)
      this.touched++
      this.touchedBytes += bytes.byteLength
    }
    return bytes
  }

  has (cid: CID, options?: BlockStoreOptions): Promise<boolean> | boolean {
    return this.#inner.has(cid, options)
  }
}

/**
 * Verifies a repository given as a CAR: every block is hash-checked as it is read,
 * the first root is the commit (further roots are allowed and ignored, as the
 * repository spec says), then everything {@link verifyRepo} checks. Blocks may
 * come in any order, so the CAR is held in memory while it is verified: its
 * blocks plus about 60 bytes each (CarBlocks, ./car-blocks.ts). Blocks the commit
 * does not reach are allowed and counted.
 *
 * Errors found once the commit is known name the repo (`did`, `rev`); that
 * includes a bad block read after the commit block.
 *
 * @throws CarParseError, CidMismatchError, UnsupportedCidError, MissingBlockError,
 * CommitInvalidError, CborDecodeError, CommitDidMismatchError, CommitSignatureError,
 * MstInvalidError, InvalidRecordPathError
 */
export async function verifyRepoCar (source: Uint8Array | AsyncIterable<Uint8Array>, options: VerifyRepoOptions = {}): Promise<RepoCarSummary> {
  const store = new CarBlocks()
  const roots: CID[] = []
  let carBytes: number
  try {
    carBytes = await readInto(store, roots, source, options)
  } catch (err) {
    // a bad block after the commit block: say whose repo it is, if the commit reads as one
    if (err instanceof RepoVerificationError && roots.length > 0) {
      const commit = peekCommit(store, roots[0])
      if (commit !== undefined) err.nameRepo(commit)
    }
    throw err
  }
  if (roots.length === 0) throw new CarParseError('no roots: a repository CAR names its commit as the first root')
  const summary = await verifyWith(store, roots[0], options)
  const result: RepoCarSummary = { ...summary, carBytes, carBlocks: store.size, unreachableBlocks: store.size - summary.blocks }
  options.log?.('verified %s rev=%s records=%d blocks=%d unreachable=%d', result.did, result.rev, result.records, result.blocks, result.unreachableBlocks)
  return result
}

/** The commit block `cid` of `store` if it is there and decodes as a commit (no signature check). */
function peekCommit (store: CarBlocks, cid: CID): Commit | undefined {
  const bytes = store.get(cid)
  if (bytes === undefined) return undefined
  try {
    return decodeCommit(bytes, cid)
  } catch {
    return undefined
  }
}

/**
 * Verifies the repository whose commit is `commit` in `store`: the commit's form,
 * DID (if `did` is given) and signature (if `key` is given), the whole MST with
 * strict structure checks, and the presence and form of every record block. Blocks
 * read from the store are hash-checked unless `trusted` is set.
 */
export async function verifyRepo (store: ReadonlyBlockStore, commit: CID, options: VerifyStoreOptions = {}): Promise<RepoSummary> {
  return await verifyWith(new CheckingStore(store, options.trusted ?? false), commit, options)
}

/**
 * Reads a repository CAR into memory, hash-checking every block. Used by
 * {@link verifyRepoCar}, and by callers that only want to list or read a CAR.
 */
export async function loadCar (source: Uint8Array | AsyncIterable<Uint8Array>, options: LoadCarOptions = {}): Promise<{ store: CarBlocks, roots: CID[], carBytes: number }> {
  const store = new CarBlocks()
  const roots: CID[] = []
  const carBytes = await readInto(store, roots, source, options)
  return { store, roots, carBytes }
}

interface LoadCarOptions {
  signal?: AbortSignal
  onProgress?: (event: VerifyProgressEvent) => void
}

/**
 * Reads a CAR into `store` and returns its size. `roots` is filled in as soon
 * as the header is read, so a caller that catches a later failure has them.
 */
async function readInto (store: CarBlocks, roots: CID[], source: Uint8Array | AsyncIterable<Uint8Array>, options: LoadCarOptions): Promise<number> {
  let carBytes = 0
  let input: Uint8Array | AsyncIterable<Uint8Array>
  if (source instanceof Uint8Array) {
    carBytes = source.byteLength
    input = source
  } else {
    input = (async function * () {
      for await (const chunk of source) {
        carBytes += chunk.byteLength
        yield chunk
      }
    })()
  }
  const car = await readCar(input, { signal: options.signal })
  roots.push(...car.roots)
  let blocks = 0
  for await (const block of car.blocks) {
    store.add(block.cid, block.bytes)
    if (++blocks % PROGRESS_EVERY === 0) {
      options.signal?.throwIfAborted()
      options.onProgress?.({ type: 'read', blocks, bytes: carBytes })
    }
  }
  options.onProgress?.({ type: 'read', blocks, bytes: carBytes })
  return carBytes
}

async function verifyWith (store: TouchingStore, commitCid: CID, options: VerifyRepoOptions): Promise<RepoSummary> {
  options.signal?.throwIfAborted()
  // before the lookup: the store would find the block under a raw CID too
  assertCommitCid(commitCid)
  let commitBytes = store.get(commitCid, { signal: options.signal })
  if (isPromise(commitBytes)) commitBytes = await commitBytes
  if (commitBytes === undefined) throw new MissingBlockError(commitCid, { what: 'commit' })
  const commit = decodeCommit(commitBytes, commitCid)
  try {
    return await verifyCommitAndTree(store, commitCid, commit, options)
  } catch (err) {
    // from here on every failure is about this repo: say which, on the error itself
    if (err instanceof RepoVerificationError) err.nameRepo(commit)
    throw err
  }
}

async function verifyCommitAndTree (store: TouchingStore, commitCid: CID, commit: Commit, options: VerifyRepoOptions): Promise<RepoSummary> {
  const { signal, onProgress, onRecord } = options
  const recordCheck = options.records ?? 'decode'
  const getOptions = { signal }
  if (options.did !== undefined && commit.did !== options.did) {
    throw new CommitDidMismatchError(options.did, commit.did, { cid: commitCid })
  }
  // the signature is checked before the walk: it is cheap, and a forged commit
  // should fail as such rather than on whatever its tree happens to lack
  let signature: RepoSummary['signature'] = 'unchecked'
  if (options.key !== undefined) {
    verifyCommitSignature(commit, options.key, { cid: commitCid })
    signature = 'verified'
  }

  let records = 0
  for await (const batch of walkMstBatches(store, commit.data, { signal, log: options.log })) {
    for (const { rpath, cid } of batch) {
      assertRecordCid(cid, rpath)
      let bytes = store.get(cid, getOptions)
      if (isPromise(bytes)) bytes = await bytes
      if (bytes === undefined) throw new MissingBlockError(cid, { rpath, what: 'record' })
      checkRecord(cid, bytes, rpath, recordCheck)
      onRecord?.(rpath, cid)
      if (++records % PROGRESS_EVERY === 0) {
        signal?.throwIfAborted()
        onProgress?.({ type: 'walk', records, blocks: store.touched })
      }
    }
  }
  onProgress?.({ type: 'walk', records, blocks: store.touched })

  return {
    did: commit.did,
    rev: commit.rev,
    commit: commitCid,
    data: commit.data,
    records,
    blocks: store.touched,
    bytes: store.touchedBytes,
    signature
  }
}

/**
 * A record is named by a CIDv1 with the DAG-CBOR codec and a sha2-256 digest:
 * checked before the lookup, as the store would find the block under a raw CID
 * too, and a digest of another kind could not be checked (the CAR reader and
 * the store views only hold sha2-256 blocks).
 */
export function assertRecordCid (cid: CID, rpath: string): void {
  if (cid.code !== DAG_CBOR) throw new UnsupportedCidError(cid, `record ${rpath} has codec 0x${cid.code.toString(16)}, want DAG-CBOR`)
  if (cid.version !== 1 || cid.multihash.code !== SHA2_256 || cid.multihash.size !== 32) {
    throw new UnsupportedCidError(cid, `record ${rpath} is not named by a sha2-256 CIDv1`)
  }
}

/**
 * Records are DAG-CBOR maps (atproto data model objects). They are checked
 * without recursion (checkDrisl), as deep as their bytes go: the data model sets
 * no depth limit and the reference implementation accepts deep records, while a
 * recursive decoder runs out of stack a few thousand levels down. Commits and MST
 * nodes, whose shape is fixed, are decoded strictly.
 */
export function checkRecord (cid: CID, bytes: Uint8Array, rpath: string, mode: RecordCheck): void {
  if (mode === 'decode') {
    if (checkDrisl(bytes, { cid }) !== 'map') throw new CborDecodeError(`record ${rpath} is not a map`, { cid })
  } else if (!startsWithMap(bytes)) {
    throw new CborDecodeError(`record ${rpath} is not a map`, { cid })
  }
}
