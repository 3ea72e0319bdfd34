/**
 * Walking an MST: every record path and CID in key order, checking the whole
 * structure on the way (see {@link checkNode}); and finding which blocks of a
 * tree a store still lacks, breadth-first so they can be fetched in batches.
 */
import type { CID } from 'multiformats/cid'
import { MissingBlockError } from '../../errors.ts'
import type { ReadonlyBlockStore } from '../block-store.ts'
import { cidKey } from '../cid.ts'
import type { RepoLogger } from '../log.ts'
import { DEFAULT_MAX_NODE_ENTRIES, checkNode, getBlocks, hasBlocks, isPromise, rootLayer } from './check.ts'
import { decodeMstNode, type MstNode } from './node.ts'

/** A record of the tree: its path and the CID of its block. */
export interface MstLeaf {
  rpath: string
  cid: CID
}

/** A node the walk needed but the store did not have. */
export interface MissingMstNode {
  cid: CID
  /** Layer the node sits at (-1 for the root, whose layer is unknown until loaded). */
  layer: number
  /** Keys of the missing subtree are greater than this. */
  after: string | null
  /** Keys of the missing subtree are less than this. */
  before: string | null
  /** The node linking to it (`null` for the root). */
  parent: CID | null
}

export interface WalkMstOptions {
  signal?: AbortSignal
  /**
   * What to do about a node the store lacks: `'throw'` a
   * {@link MissingBlockError}, or `'skip'` its subtree, report it to
   * {@link WalkMstOptions.onMissingNode} and go on with the rest.
   * @default 'throw'
   */
  onMissing?: 'throw' | 'skip'
  /** Called for every skipped missing node (with `onMissing: 'skip'`). */
  onMissingNode?: (missing: MissingMstNode) => void
  /** Most entries a node may hold. @default 1024 */
  maxNodeEntries?: number
  /** Leaves per batch yielded by {@link walkMstBatches}. @default 256 */
  batchSize?: number
  /** Debug logger (see ../log.ts). @default none */
  log?: RepoLogger
}

interface Frame {
  cid: CID
  node: MstNode
  layer: number
  /** Next entry to emit; -1 while the left subtree is still to visit. */
  next: number
  after: string | null
  before: string | null
}

/**
 * Every leaf of the tree at `root`, in key order, in batches. This is the fast
 * path: nodes are fetched one at a time in key order, decoded once and checked
 * against their place; a batch is handed out when full or before waiting on an
 * async store, and no promise is created at all while a synchronous store
 * answers.
 *
 * Throws {@link MstInvalidError}, InvalidRecordPathError or CborDecodeError for
 * a broken tree, and {@link MissingBlockError} for an absent node unless
 * `onMissing` is `'skip'`. Record blocks are not read.
 */
export async function * walkMstBatches (store: ReadonlyBlockStore, root: CID, options: WalkMstOptions = {}): AsyncGenerator<MstLeaf[]> {
  const { signal } = options
  const maxEntries = options.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES
  const batchSize = options.batchSize ?? 256
  const skip = options.onMissing === 'skip'
  const getOptions = { signal }
  signal?.throwIfAborted()

  let rootBytes = store.get(root, getOptions)
  if (isPromise(rootBytes)) rootBytes = await rootBytes
  if (rootBytes === undefined) {
    const missing: MissingMstNode = { cid: root, layer: -1, after: null, before: null, parent: null }
    if (!skip) throw missingNodeError(missing)
    options.log?.('MST root %c missing, skipped', root)
    options.onMissingNode?.(missing)
    return
  }
  const rootNode = decodeMstNode(rootBytes, root)
  const layer = rootLayer(rootNode, root)
  if (layer === -1) return // the empty repo
  checkNode(rootNode, root, { layer, after: null, before: null, root: true }, maxEntries)

  const stack: Frame[] = [{ cid: root, node: rootNode, layer, next: -1, after: null, before: null }]
  let batch: MstLeaf[] = []
  while (stack.length > 0) {
    const frame = stack[stack.length - 1]
    const entries = frame.node.entries
    let child: CID | null
    let after: string | null
    let before: string | null
    if (frame.next === -1) {
      frame.next = 0
      child = frame.node.left
      after = frame.after
      before = entries.length > 0 ? entries[0].key : frame.before
    } else if (frame.next < entries.length) {
      const entry = entries[frame.next++]
      batch.push({ rpath: entry.key, cid: entry.value })
      if (batch.length >= batchSize) {
        yield batch
        batch = []
      }
      child = entry.right
      after = entry.key
      before = frame.next < entries.length ? entries[frame.next].key : frame.before
    } else {
      stack.pop()
      continue
    }
    if (child === null) continue

    let bytes = store.get(child, getOptions)
    if (isPromise(bytes)) {
      if (batch.length > 0) {
        yield batch
        batch = []
      }
      bytes = await bytes
    }
    if (bytes === undefined) {
      const missing: MissingMstNode = { cid: child, layer: frame.layer - 1, after, before, parent: frame.cid }
      if (!skip) throw missingNodeError(missing)
      options.onMissingNode?.(missing)
      continue
    }
    signal?.throwIfAborted()
    const node = decodeMstNode(bytes, child)
    checkNode(node, child, { layer: frame.layer - 1, after, before, root: false }, maxEntries)
    stack.push({ cid: child, node, layer: frame.layer - 1, next: -1, after, before })
  }
  if (batch.length > 0) yield batch
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
 * present are checked as in {@link walkMstBatches}; duplicates are reported once.
 */
export async function * missingMstBlockBatches (store: ReadonlyBlockStore, root: CID, options: MissingMstBlocksOptions = {}): AsyncGenerator<CID[]> {
  const { signal } = options
  const withRecords = options.records ?? true
  const batchSize = Math.max(1, options.batchSize ?? 256)
  const maxEntries = options.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES
  const getOptions = { signal }
  const seen = new Set<string>()
  let frontier: MissingMstNode[] = [{ cid: root, layer: -1, after: null, before: null, parent: null }]

  while (frontier.length > 0) {
    const next: MissingMstNode[] = []
    for (let start = 0; start < frontier.length; start += batchSize) {
      signal?.throwIfAborted()
      const chunk = frontier.slice(start, start + batchSize)
      let answers = getBlocks(store, chunk.map(item => item.cid), getOptions)
      if (isPromise(answers)) answers = await answers
      const missing: CID[] = []
      const records: CID[] = []
      for (let i = 0; i < chunk.length; i++) {
        const item = chunk[i]
        const bytes = answers[i]
        if (bytes === undefined) {
          missing.push(item.cid)
          continue
        }
        const node = decodeMstNode(bytes, item.cid)
        let layer = item.layer
        if (item.parent === null) {
          layer = rootLayer(node, item.cid)
          if (layer === -1) continue
        }
        checkNode(node, item.cid, { layer, after: item.after, before: item.before, root: item.parent === null }, maxEntries)
        const { entries } = node
        if (node.left !== null) {
          next.push({ cid: node.left, layer: layer - 1, after: item.after, before: entries.length > 0 ? entries[0].key : item.before, parent: item.cid })
        }
        for (let j = 0; j < entries.length; j++) {
          const entry = entries[j]
          if (entry.right !== null) {
            next.push({ cid: entry.right, layer: layer - 1, after: entry.key, before: j + 1 < entries.length ? entries[j + 1].key : item.before, parent: item.cid })
          }
          if (withRecords) {
            const key = cidKey(entry.value)
            if (!seen.has(key)) {
              seen.add(key)
              records.push(entry.value)
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
      if (missing.length > 0) yield missing
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

/** The error for a missing node, naming its place in the tree. */
export function missingNodeError (missing: MissingMstNode): MissingBlockError {
  const range = missing.parent === null
    ? 'MST root node'
    : `MST node (layer ${missing.layer}, keys${missing.after !== null ? ` after ${JSON.stringify(missing.after)}` : ''}${missing.before !== null ? ` before ${JSON.stringify(missing.before)}` : ''}, linked from ${String(missing.parent)})`
  return new MissingBlockError(missing.cid, { what: range, rpath: missing.after ?? missing.before ?? undefined })
}
