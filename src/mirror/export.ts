/**
 * A stored repo as a CAR: the commit first (and as the only root), then the MST in
 * pre-order (a node, its left subtree, then each entry's record and right
 * subtree), each record once. That is the order the sync spec suggests for
 * streaming consumers, and anything that loads the whole CAR accepts it too.
 *
 * Blocks are read from the store as the CAR is written: memory holds one path of
 * the tree and one batch of the walk, not the repo. The tree is read through the
 * repo's one MST traversal (../repo/mst/walk.ts), without structure checks (it
 * was verified when stored); a node linked twice fails the export rather than
 * being written again. Every block is hash-checked before it is written out, so a
 * damaged one fails the export rather than landing in the CAR (give a store that
 * repairs, MirrorStore.verifiedBlocks, to have it refetched instead).
 */
import { MissingBlockError, RepoNotMirroredError } from '../errors.ts'
import type { Block, ReadonlyBlockStore } from '../repo/block-store.ts'
import { writeCar } from '../repo/car.ts'
import { CID, cidKey, verifyBlock } from '../repo/cid.ts'
import { decodeCommit } from '../repo/commit.ts'
import { getBlocks, isPromise } from '../repo/mst/check.ts'
import { walkMstSteps, type MstLeaf } from '../repo/mst/walk.ts'
import { isExportable } from './status-policy.ts'
import type { MirrorStore } from './store.ts'

export interface ExportOptions {
  signal?: AbortSignal
}

/**
 * The stored repo of `did` as a CAR (commit first); RepoNotMirroredError when
 * nothing is stored. Garbage collection waits while the CAR is read, so a sync that
 * advances the repo meanwhile cannot pull blocks from under it.
 */
export async function * exportStoredRepo (store: MirrorStore, did: string, options: ExportOptions = {}): AsyncGenerator<Uint8Array> {
  const release = await store.beginWrite()
  try {
    const state = await store.getState(did)
    if (!isExportable(state)) throw new RepoNotMirroredError(did)
    // hash-checked reads: a damaged block is refetched (or the export fails), never exported
    yield * exportRepoCar(store.verifiedBlocks({ did, signal: options.signal }), CID.parse(state.commit), options)
  } finally {
    await release()
  }
}

/** The CAR bytes of the repo whose commit is `commit`, streamed. */
export async function * exportRepoCar (store: ReadonlyBlockStore, commit: CID, options: ExportOptions = {}): AsyncGenerator<Uint8Array> {
  yield * writeCar([commit], repoBlocks(store, commit, options))
}

/**
 * Every block of the repo at `commit`, commit first, then the MST in pre-order.
 *
 * @throws MissingBlockError when the store lacks a block the repo needs;
 * MstInvalidError for a node reached twice; CidMismatchError when a block's bytes
 * do not hash to its CID
 */
export async function * repoBlocks (store: ReadonlyBlockStore, commit: CID, options: ExportOptions = {}): AsyncGenerator<Block> {
  const { signal } = options
  const commitBytes = await store.get(commit, { signal })
  if (commitBytes === undefined) throw new MissingBlockError(commit, { what: 'commit' })
  verifyBlock(commit, commitBytes)
  yield { cid: commit, bytes: commitBytes }
  const { data } = decodeCommit(commitBytes, commit)
  const seen = new Set<string>()

  for await (const batch of walkMstSteps(store, data, { signal, check: false })) {
    // the batch's records are read together, then written in walk order
    const records: MstLeaf[] = []
    for (const step of batch) {
      if ('node' in step) continue
      const key = cidKey(step.cid)
      if (seen.has(key)) continue
      seen.add(key)
      records.push(step)
    }
    let values = getBlocks(store, records.map(record => record.cid), { signal })
    if (isPromise(values)) values = await values
    const bytes = new Map<MstLeaf, Uint8Array>()
    for (let i = 0; i < records.length; i++) {
      const value = values[i]
      if (value === undefined) throw new MissingBlockError(records[i].cid, { what: 'record', rpath: records[i].rpath })
      bytes.set(records[i], value)
    }
    for (const step of batch) {
      if ('node' in step) {
        verifyBlock(step.cid, step.bytes)
        yield { cid: step.cid, bytes: step.bytes }
        continue
      }
      const value = bytes.get(step)
      if (value === undefined) continue
      verifyBlock(step.cid, value)
      yield { cid: step.cid, bytes: value }
    }
  }
}
