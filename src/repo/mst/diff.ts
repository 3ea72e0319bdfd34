/**
 * The difference between two MSTs: which nodes the new tree has that the old one
 * lacks (created) and the reverse (deleted), and the record changes.
 *
 * A node's CID fixes its content and, for a canonical tree, its layer and key
 * range, and a node occurs at most once per tree. So the trees are read
 * layer by layer from the top, both at once, and a node present on both sides
 * at a layer is skipped with everything below it: only created and deleted
 * nodes are ever loaded. Every key sits in exactly one node per tree, so the
 * record changes are exactly the differences between the entries of the
 * created nodes and those of the deleted nodes.
 */
import type { CID } from 'multiformats/cid'
import { MissingBlockError } from '../../errors.ts'
import type { ReadonlyBlockStore } from '../block-store.ts'
import { cidKey } from '../cid.ts'
import { DEFAULT_MAX_NODE_ENTRIES, checkNode, getBlocks, isPromise, rootLayer } from './check.ts'
import { keyHeight } from './key.ts'
import { decodeMstNode, type MstNode } from './node.ts'
import { invertCommitOps, type CommitOp } from './proof.ts'
import { type MissingMstNode, missingNodeError } from './walk.ts'

/** One record change. */
export interface MstRecordOp {
  rpath: string
  /** CID before (`null`: created). */
  oldValue: CID | null
  /** CID after (`null`: deleted). */
  newValue: CID | null
}

export interface MstDiff {
  /** Nodes of the new tree that the old tree lacks. */
  createdNodes: CID[]
  /** Nodes of the old tree that the new tree lacks. */
  deletedNodes: CID[]
  /** Record changes, in path order. */
  recordOps: MstRecordOp[]
  /**
   * With `proofs: true`: the nodes of the new tree that prove each op there
   * (the path to each created or updated key, and the path searched for each
   * deleted key).
   */
  proofNodes?: CID[]
  /**
   * With `proofs: true`: the nodes of the new tree that undoing the ops needs
   * (sync 1.1 inductive proof), undoing them in reverse path order.
   */
  inductiveProofNodes?: CID[]
}

export interface DiffMstOptions {
  signal?: AbortSignal
  /** Also compute `proofNodes` and `inductiveProofNodes`. @default false */
  proofs?: boolean
  /** Most entries a node may hold. @default 1024 */
  maxNodeEntries?: number
}

interface Pending extends MissingMstNode {
  node?: MstNode
}

/**
 * Diffs the tree at `before` (`null`: nothing) against the tree at `after`.
 * Throws {@link MissingBlockError} for a changed node the store lacks and
 * MstInvalidError / InvalidRecordPathError for a broken one.
 */
export async function diffMst (store: ReadonlyBlockStore, before: CID | null, after: CID, options: DiffMstOptions = {}): Promise<MstDiff> {
  const { signal } = options
  const maxEntries = options.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES
  const getOptions = { signal }
  signal?.throwIfAborted()
  if (before !== null && before.equals(after)) {
    return { createdNodes: [], deletedNodes: [], recordOps: [], ...(options.proofs === true ? { proofNodes: [], inductiveProofNodes: [] } : {}) }
  }

  const createdNodes: CID[] = []
  const deletedNodes: CID[] = []
  const newValues = new Map<string, CID>()
  const oldValues = new Map<string, CID>()
  const newNodes = new Map<string, MstNode>()
  // levels[side][layer]: nodes of that side waiting at that layer
  const levels: [Pending[][], Pending[][]] = [[], []]

  const roots: Array<{ cid: CID, side: 0 | 1 }> = [{ cid: after, side: 1 }]
  if (before !== null) roots.push({ cid: before, side: 0 })
  let rootAnswers = getBlocks(store, roots.map(r => r.cid), getOptions)
  if (isPromise(rootAnswers)) rootAnswers = await rootAnswers
  let top = -1
  for (let i = 0; i < roots.length; i++) {
    const { cid, side } = roots[i]
    const bytes = rootAnswers[i]
    if (bytes === undefined) throw missingNodeError({ cid, layer: -1, after: null, before: null, parent: null })
    const node = decodeMstNode(bytes, cid)
    const layer = rootLayer(node, cid)
    if (layer >= 0) checkNode(node, cid, { layer, after: null, before: null, root: true }, maxEntries)
    const level = (levels[side][layer + 1] ??= [])
    level.push({ cid, layer, after: null, before: null, parent: null, node })
    if (layer > top) top = layer
  }

  for (let layer = top; layer >= -1; layer--) {
    const olds = levels[0][layer + 1] ?? []
    const news = levels[1][layer + 1] ?? []
    if (olds.length === 0 && news.length === 0) continue
    // A node on both sides at the same layer is the same subtree: skip it whole.
    const oldKeys = new Set(olds.map(item => cidKey(item.cid)))
    const common = new Set<string>()
    for (const item of news) {
      const key = cidKey(item.cid)
      if (oldKeys.has(key)) common.add(key)
    }
    const work: Array<{ item: Pending, side: 0 | 1 }> = []
    for (const item of olds) if (!common.has(cidKey(item.cid))) work.push({ item, side: 0 })
    for (const item of news) if (!common.has(cidKey(item.cid))) work.push({ item, side: 1 })

    const toLoad = work.filter(w => w.item.node === undefined)
    if (toLoad.length > 0) {
      signal?.throwIfAborted()
      let answers = getBlocks(store, toLoad.map(w => w.item.cid), getOptions)
      if (isPromise(answers)) answers = await answers
      for (let i = 0; i < toLoad.length; i++) {
        const { item } = toLoad[i]
        const bytes = answers[i]
        if (bytes === undefined) throw missingNodeError(item)
        const node = decodeMstNode(bytes, item.cid)
        checkNode(node, item.cid, { layer, after: item.after, before: item.before, root: false }, maxEntries)
        item.node = node
      }
    }

    for (const { item, side } of work) {
      const node = item.node as MstNode
      if (side === 1) {
        createdNodes.push(item.cid)
        newNodes.set(cidKey(item.cid), node)
      } else {
        deletedNodes.push(item.cid)
      }
      const values = side === 1 ? newValues : oldValues
      const { entries } = node
      const below = (levels[side][layer] ??= [])
      if (node.left !== null) {
        below.push({ cid: node.left, layer: layer - 1, after: item.after, before: entries.length > 0 ? entries[0].key : item.before, parent: item.cid })
      }
      for (let j = 0; j < entries.length; j++) {
        const entry = entries[j]
        values.set(entry.key, entry.value)
        if (entry.right !== null) {
          below.push({ cid: entry.right, layer: layer - 1, after: entry.key, before: j + 1 < entries.length ? entries[j + 1].key : item.before, parent: item.cid })
        }
      }
    }
  }

  const recordOps: MstRecordOp[] = []
  for (const [rpath, newValue] of newValues) {
    const oldValue = oldValues.get(rpath)
    if (oldValue === undefined) recordOps.push({ rpath, oldValue: null, newValue })
    else if (!oldValue.equals(newValue)) recordOps.push({ rpath, oldValue, newValue })
  }
  for (const [rpath, oldValue] of oldValues) {
    if (!newValues.has(rpath)) recordOps.push({ rpath, oldValue, newValue: null })
  }
  recordOps.sort((a, b) => a.rpath < b.rpath ? -1 : a.rpath > b.rpath ? 1 : 0)

  const result: MstDiff = { createdNodes, deletedNodes, recordOps }
  if (options.proofs === true) {
    result.proofNodes = await proofNodesFor(store, after, recordOps.map(op => op.rpath), newNodes, options)
    const ops: CommitOp[] = recordOps.map(op => op.oldValue === null
      ? { action: 'create', path: op.rpath, cid: op.newValue }
      : op.newValue === null
        ? { action: 'delete', path: op.rpath, cid: null, prev: op.oldValue }
        : { action: 'update', path: op.rpath, cid: op.newValue, prev: op.oldValue })
    result.inductiveProofNodes = (await invertCommitOps(store, after, ops.reverse(), { signal })).loaded
  }
  return result
}

/**
 * The nodes of the tree at `root` on the search path of each of `rpaths`: from
 * the root down to the node holding the key, or until the search ends (a
 * missing subtree, or a node below the key's height, which is included).
 * `known` holds already decoded nodes by {@link cidKey}.
 */
export async function proofNodesFor (store: ReadonlyBlockStore, root: CID, rpaths: readonly string[], known: Map<string, MstNode> = new Map(), options: { signal?: AbortSignal } = {}): Promise<CID[]> {
  const proof = new Map<string, CID>()
  const load = async (cid: CID, layer: number): Promise<MstNode> => {
    const key = cidKey(cid)
    const cached = known.get(key)
    if (cached !== undefined) return cached
    let bytes = store.get(cid, { signal: options.signal })
    if (isPromise(bytes)) bytes = await bytes
    if (bytes === undefined) throw new MissingBlockError(cid, { what: `MST node (proof path, layer ${layer})` })
    const node = decodeMstNode(bytes, cid)
    known.set(key, node)
    return node
  }
  const rootNode = await load(root, -1)
  const top = rootLayer(rootNode, root)
  for (const rpath of rpaths) {
    const height = keyHeight(rpath)
    let cid = root
    let node = rootNode
    let layer = top
    while (true) {
      proof.set(cidKey(cid), cid)
      if (height > layer) break
      const { entries } = node
      let i = 0
      while (i < entries.length && entries[i].key < rpath) i++
      if (i < entries.length && entries[i].key === rpath) break
      const sub = i === 0 ? node.left : entries[i - 1].right
      if (sub === null) break
      cid = sub
      layer--
      node = await load(cid, layer)
    }
  }
  return [...proof.values()]
}
