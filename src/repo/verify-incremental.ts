/**
 * Verifying a repo's advance in proportion to the change: a new commit whose
 * tree shares all but a few nodes with a tree verified before. The argument for
 * why this proves as much as verifying the new repo whole is in
 * docs/ARCHITECTURE.md ("Verification in proportion to the change"); in short,
 * what is checked:
 *
 * - the commit: its CID form, its DID (when `did` is given), its signature
 *   against `key` (the key of the identity the head or event was verified
 *   against);
 * - the MST nodes the new tree has and the old one lacks, each at its place
 *   (layer, key range, entry count, root rules), read through the one traversal
 *   by {@link diffMst}, which stops at every subtree the old tree holds at the
 *   same layer and checks instead that its keys fit the new range (against the
 *   created node's neighbouring keys);
 * - every new or changed record: present, hash-checked (unless `trusted`),
 *   named by a DAG-CBOR sha2-256 CIDv1 and a CBOR map.
 *
 * Used by the `getRepo?since` sync (src/mirror/sync.ts) over the blocks it
 * stored, and meant for a firehose `#commit`: pass the event's blocks over the
 * stored ones (`new OverlayBlockStore(eventBlocks, stored)`), and write
 * `result.blocks` once it resolves. Nothing is written here; the caller's
 * staged write, atomic advance and GC stay as they are. Checking the event's
 * ops and `prevData` (sync 1.1) is ./mst/proof.ts's; `recordOps` here are
 * what the tree says changed, to compare with them.
 */
import type { CID } from 'multiformats/cid'
import { CommitDidMismatchError, MissingBlockError, RepoVerificationError } from '../errors.ts'
import type { Block, ReadonlyBlockStore } from './block-store.ts'
import { assertCommitCid, decodeCommit, verifyCommitSignature, type Commit } from './commit.ts'
import type { PublicKey } from './keys.ts'
import type { RepoLogger } from './log.ts'
import { isPromise } from './mst/check.ts'
import { diffMst, type MstRecordOp } from './mst/diff.ts'
import { assertRecordCid, CheckingStore, checkRecord, type RecordCheck } from './verify.ts'

export interface VerifyIncrementalInput {
  /**
   * The MST root (`data`) of the stored repo, verified before (by a full or an
   * incremental verification). `null`: nothing stored, every node is created
   * (a whole verification, through the diff).
   */
  oldData: CID | null
  /** CID of the new commit. */
  commit: CID
  /**
   * Where the blocks are: the stored repo's blocks, plus the new ones (stored by
   * a sync, or an event's blocks over the store with OverlayBlockStore).
   */
  blocks: ReadonlyBlockStore
  /** The signing key the commit must verify against. */
  key: PublicKey
  /** Fail with CommitDidMismatchError unless the commit is for this DID. */
  did?: string
  /**
   * The store's blocks were hash-checked when stored (or are checked by the
   * store on every read), so they are not hashed again. @default false
   */
  trusted?: boolean
  /** How new record blocks are checked (see {@link RecordCheck}). @default 'decode' */
  records?: RecordCheck
  /** Most entries an MST node may hold. @default 1024 */
  maxNodeEntries?: number
  signal?: AbortSignal
  /** Debug logger (see ./log.ts). @default none */
  log?: RepoLogger
}

/** What an incremental verification established and found changed. */
export interface IncrementalVerification {
  did: string
  rev: string
  /** CID of the new, verified commit. */
  commit: CID
  /** Its MST root. */
  data: CID
  /** The decoded commit. */
  decoded: Commit
  /** MST nodes of the new tree that the old one lacks (each checked at its place). */
  createdNodes: CID[]
  /** MST nodes of the old tree that the new one lacks. */
  deletedNodes: CID[]
  /** Record changes, in path order (`oldValue` null: created; `newValue` null: deleted). */
  recordOps: MstRecordOp[]
  /**
   * The blocks the new repo adds, as read: the commit, the created nodes and
   * each new record block (once). What a firehose advance writes.
   */
  blocks: Block[]
  /** Records created minus records deleted: the change in the repo's record count. */
  recordDelta: number
  /** Distinct blocks read (commit, created and deleted nodes, edges of reused subtrees, new records). */
  blocksRead: number
}

/**
 * Verifies that the commit `commit` is a valid advance of the repo whose verified
 * MST root is `oldData`, reading only what changed (see the file header). Errors
 * past the commit name the repo (`did`, `rev`); nothing is written either way.
 *
 * @throws UnsupportedCidError, MissingBlockError, CommitInvalidError,
 * CborDecodeError, CommitDidMismatchError, CommitSignatureError, MstInvalidError,
 * InvalidRecordPathError, CidMismatchError (a block that does not hash to its CID)
 */
export async function verifyIncremental (input: VerifyIncrementalInput): Promise<IncrementalVerification> {
  const { signal, oldData } = input
  signal?.throwIfAborted()
  const store = new CheckingStore(input.blocks, input.trusted ?? false)
  const getOptions = { signal }
  assertCommitCid(input.commit)
  const commitBytes = await read(store, input.commit, getOptions)
  if (commitBytes === undefined) throw new MissingBlockError(input.commit, { what: 'commit' })
  const commit = decodeCommit(commitBytes, input.commit)
  try {
    if (input.did !== undefined && commit.did !== input.did) {
      throw new CommitDidMismatchError(input.did, commit.did, { cid: input.commit })
    }
    verifyCommitSignature(commit, input.key, { cid: input.commit })

    const diff = await diffMst(store, oldData, commit.data, { signal, maxNodeEntries: input.maxNodeEntries })
    const blocks: Block[] = [{ cid: input.commit, bytes: commitBytes }]
    for (const cid of diff.createdNodes) {
      // just read by the diff: the store answers from memory or the page cache
      const bytes = await read(store, cid, getOptions)
      if (bytes === undefined) throw new MissingBlockError(cid, { what: 'MST node' })
      blocks.push({ cid, bytes })
    }
    const recordCheck = input.records ?? 'decode'
    const added = new Set<string>()
    let recordDelta = 0
    for (const op of diff.recordOps) {
      if (op.oldValue === null) recordDelta++
      if (op.newValue === null) {
        recordDelta--
        continue
      }
      const cid = op.newValue
      assertRecordCid(cid, op.rpath)
      const bytes = await read(store, cid, getOptions)
      if (bytes === undefined) throw new MissingBlockError(cid, { rpath: op.rpath, what: 'record' })
      checkRecord(cid, bytes, op.rpath, recordCheck)
      const key = cid.toString()
      if (!added.has(key)) {
        added.add(key)
        blocks.push({ cid, bytes })
      }
    }
    input.log?.('verified advance of %s to rev %s: %d nodes created, %d deleted, %d record ops, %d blocks read',
      commit.did, commit.rev, diff.createdNodes.length, diff.deletedNodes.length, diff.recordOps.length, store.touched)
    return {
      did: commit.did,
      rev: commit.rev,
      commit: input.commit,
      data: commit.data,
      decoded: commit,
      createdNodes: diff.createdNodes,
      deletedNodes: diff.deletedNodes,
      recordOps: diff.recordOps,
      blocks,
      recordDelta,
      blocksRead: store.touched
    }
  } catch (err) {
    if (err instanceof RepoVerificationError) err.nameRepo(commit)
    throw err
  }
}

async function read (store: ReadonlyBlockStore, cid: CID, options: { signal?: AbortSignal }): Promise<Uint8Array | undefined> {
  const bytes = store.get(cid, options)
  return isPromise(bytes) ? await bytes : bytes
}
