/**
 * Reading a whole MST through the one traversal of ./traverse.ts: depth first
 * in key order ({@link walkMstSteps}: every node before its subtrees, every
 * record path and CID in key order, the structure checked on the way), and
 * breadth first for the blocks a store still lacks, so they can be fetched in
 * batches.
 */
import type { CID } from 'multiformats/cid'
import type { ReadonlyBlockStore } from '../block-store.ts'
import { cidKey } from '../cid.ts'
import { DEFAULT_MAX_NODE_ENTRIES, getBlocks, hasBlocks, isPromise } from './check.ts'
import { MstTraversal, type MissingMstNode, type MstPlace, type MstTraversalInit, type MstVisit } from './traverse.ts'

export type { MissingMstNode } from './traverse.ts'

/** A record of the tree: its path and the CID of its block. */
export interface MstLeaf {
  rpath: string
  cid: CID
}

/** What a depth-first walk hands out: entered nodes ({@link MstVisit}, which has `node`) and leaves. */
export type MstStep = MstVisit | MstLeaf

export interface WalkMstOptions extends MstTraversalInit {
  signal?: AbortSignal
  /** Steps per batch yielded by {@link walkMstBatches} / {@link walkMstSteps}. @default 256 */
  batchSize?: number
}

interface Frame {
  visit: MstVisit
  /** Next entry to emit; -1 while the left subtree is still to visit. */
  next: number
}

/**
 * Every node and leaf of the tree at `root`, depth first, in batches: a node
 * before its left subtree, each leaf (in key order) before its right subtree,
 * which is the CAR order the sync spec suggests. Nodes are fetched one at a
 * time, decoded once and checked against their place (unless `check: false`); a
 * batch is handed out when full or before waiting on an async store, and no
 * promise is created at all while a synchronous store answers.
 *
 * Throws {@link MstInvalidError} for a broken tree (a node reached twice
 * included), InvalidRecordPathError or CborDecodeError, and
 * {@link MissingBlockError} for an absent node unless `onMissing` is `'skip'`.
 * Record blocks are not read.
 */
export async function * walkMstSteps (store: ReadonlyBlockStore, root: CID, options: WalkMstOptions = {}): AsyncGenerator<MstStep[]> {
  yield * depthFirst(store, root, options, true)
}

/**
 * Every leaf of the tree at `root`, in key order, in batches: {@link walkMstSteps}
 * without the nodes. This is the fast path verification takes.
 */
export async function * walkMstBatches (store: ReadonlyBlockStore, root: CID, options: WalkMstOptions = {}): AsyncGenerator<MstLeaf[]> {
  yield * depthFirst(store, root, options, false) as AsyncGenerator<MstLeaf[]>
}

/**
 * Every leaf of the tree at `root` as `{ rpath, cid }`, in key order, with the
 * structure checked as it is loaded (see {@link walkMstBatches}, which is the
 * faster interface when per-leaf async iteration matters).
 */
export async function * walkMst (store: ReadonlyBlockStore, root: CID, options: WalkMstOptions = {}): AsyncGenerator<MstLeaf> {
  for await (const batch of walkMstBatches(store, root, options)) {
    yield * batch
  }
}

async function * depthFirst (store: ReadonlyBlockStore, root: CID, options: WalkMstOptions, nodes: boolean): AsyncGenerator<MstStep[]> {
  const { signal } = options
  const batchSize = options.batchSize ?? 256
  const getOptions = { signal }
  signal?.throwIfAborted()
  const traversal = new MstTraversal(root, options)

  let rootBytes = store.get(root, getOptions)
  if (isPromise(rootBytes)) rootBytes = await rootBytes
  if (rootBytes === undefined) {
    traversal.missing(traversal.root)
    return
  }
  const rootVisit = traversal.enter(traversal.root, rootBytes)
  let batch: MstStep[] = nodes ? [rootVisit] : []
  const stack: Frame[] = [{ visit: rootVisit, next: -1 }]
  while (stack.length > 0) {
    const frame = stack[stack.length - 1]
    const { visit } = frame
    const entries = visit.node.entries
    let child: MstPlace | null
    if (frame.next === -1) {
      frame.next = 0
      child = visit.left
    } else if (frame.next < entries.length) {
      const i = frame.next++
      const entry = entries[i]
      batch.push({ rpath: entry.key, cid: entry.value })
      if (batch.length >= batchSize) {
        yield batch
        batch = []
      }
      child = visit.rights[i]
    } else {
      stack.pop()
      continue
    }
    if (child === null) continue

    let bytes = store.get(child.cid, getOptions)
    if (isPromise(bytes)) {
      if (batch.length > 0) {
        yield batch
        batch = []
      }
      bytes = await bytes
    }
    if (bytes === undefined) {
      traversal.missing(child)
      continue
    }
    signal?.throwIfAborted()
    const next = traversal.enter(child, bytes)
    if (nodes) {
      batch.push(next)
      if (batch.length >= batchSize) {
        yield batch
        batch = []
      }
    }
    stack.push({ visit: next, next: -1 })
  }
  if (batch.length > 0) yield batch
}

export interface MissingMstBlocksOptions {
  signal?: AbortSignal
  /** Also report record blocks (leaves) the store lacks. @default true */
  records?: boolean
  /** Most blocks asked of the store at once. @default 256 */
  batchSize?: number
  /** Most entries a node may hold. @default 1024 */
  maxNodeEntries?: number
}

/**
 * The blocks of the tree at `root` that `store` lacks, in batches: MST nodes and
 * (unless `records: false`) record blocks. The tree is read breadth-first, a
 * layer's nodes requested together (up to `batchSize` at a time), so an async
 * store sees many requests at once. Below a missing node nothing can be known,
 * so fetch what is reported and call again until nothing is left. Nodes that are
 * present are checked as in {@link walkMstBatches}; records are reported once.
 */
export async function * missingMstBlockBatches (store: ReadonlyBlockStore, root: CID, options: MissingMstBlocksOptions = {}): AsyncGenerator<CID[]> {
  const { signal } = options
  const withRecords = options.records ?? true
  const batchSize = Math.max(1, options.batchSize ?? 256)
  const getOptions = { signal }
  const seen = new Set<string>()
  let missing: CID[] = []
  const traversal = new MstTraversal(root, {
    maxNodeEntries: options.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES,
    onMissing: 'skip',
    onMissingNode: (place: MissingMstNode) => { missing.push(place.cid) }
  })
  let frontier: MstPlace[] = [traversal.root]

  while (frontier.length > 0) {
    const next: MstPlace[] = []
    for (let start = 0; start < frontier.length; start += batchSize) {
      signal?.throwIfAborted()
      const chunk = frontier.slice(start, start + batchSize)
      let answers = getBlocks(store, chunk.map(place => place.cid), getOptions)
      if (isPromise(answers)) answers = await answers
      const records: CID[] = []
      for (let i = 0; i < chunk.length; i++) {
        const bytes = answers[i]
        if (bytes === undefined) {
          traversal.missing(chunk[i])
          continue
        }
        const { node, left, rights } = traversal.enter(chunk[i], bytes)
        if (left !== null) next.push(left)
        const { entries } = node
        for (let j = 0; j < entries.length; j++) {
          const right = rights[j]
          if (right !== null) next.push(right)
          if (withRecords) {
            const value = entries[j].value
            const key = cidKey(value)
            if (!seen.has(key)) {
              seen.add(key)
              records.push(value)
            }
          }
        }
      }
      if (records.length > 0) {
        let present = hasBlocks(store, records, getOptions)
        if (isPromise(present)) present = await present
        for (let i = 0; i < records.length; i++) {
          if (!present[i]) missing.push(records[i])
        }
      }
      if (missing.length > 0) {
        yield missing
        missing = []
      }
    }
    frontier = next
  }
}

/**
 * The blocks of the tree at `root` that `store` lacks, one CID at a time (see
 * {@link missingMstBlockBatches} for the batched form and the rules).
 */
export async function * missingMstBlocks (store: ReadonlyBlockStore, root: CID, options: MissingMstBlocksOptions = {}): AsyncGenerator<CID> {
  for await (const batch of missingMstBlockBatches(store, root, options)) {
    yield * batch
  }
}
