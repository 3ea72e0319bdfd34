/**
 * A stored repo as a CAR: the commit first (and as the only root), then the MST in
 * pre-order (a node, its left subtree, then each entry's record and right
 * subtree), each record once. That is the order the sync spec suggests for
 * streaming consumers, and anything that loads the whole CAR accepts it too.
 *
 * Blocks are read from the store as the CAR is written: memory holds one path of
 * the tree, not the repo.
 */
import { MissingBlockError } from '../errors.ts'
import type { Block, ReadonlyBlockStore } from '../repo/block-store.ts'
import { writeCar } from '../repo/car.ts'
import { cidKey, type CID } from '../repo/cid.ts'
import { decodeCommit } from '../repo/commit.ts'
import { decodeMstNode } from '../repo/mst/node.ts'

export interface ExportOptions {
  signal?: AbortSignal
}

/** The CAR bytes of the repo whose commit is `commit`, streamed. */
export async function * exportRepoCar (store: ReadonlyBlockStore, commit: CID, options: ExportOptions = {}): AsyncGenerator<Uint8Array> {
  yield * writeCar([commit], repoBlocks(store, commit, options))
}

/**
 * Every block of the repo at `commit`, commit first, then the MST in pre-order.
 *
 * @throws MissingBlockError when the store lacks a block the repo needs
 */
export async function * repoBlocks (store: ReadonlyBlockStore, commit: CID, options: ExportOptions = {}): AsyncGenerator<Block> {
  const { signal } = options
  const commitBytes = await store.get(commit, { signal })
  if (commitBytes === undefined) throw new MissingBlockError(commit, { what: 'commit' })
  yield { cid: commit, bytes: commitBytes }
  const { data } = decodeCommit(commitBytes, commit)
  const seen = new Set<string>()

  async function * subtree (cid: CID): AsyncGenerator<Block> {
    signal?.throwIfAborted()
    const bytes = await store.get(cid, { signal })
    if (bytes === undefined) throw new MissingBlockError(cid, { what: 'MST node' })
    yield { cid, bytes }
    const node = decodeMstNode(bytes, cid)
    // a node's records are read together; its subtrees one after another, in order
    const records = await Promise.all(node.entries.map(async (entry) => {
      const key = cidKey(entry.value)
      if (seen.has(key)) return undefined
      seen.add(key)
      const value = await store.get(entry.value, { signal })
      if (value === undefined) throw new MissingBlockError(entry.value, { what: 'record', rpath: entry.key })
      return value
    }))
    if (node.left !== null) yield * subtree(node.left)
    for (let i = 0; i < node.entries.length; i++) {
      const entry = node.entries[i]
      const value = records[i]
      if (value !== undefined) yield { cid: entry.value, bytes: value }
      if (entry.right !== null) yield * subtree(entry.right)
    }
  }

  yield * subtree(data)
}
