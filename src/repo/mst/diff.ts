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
 *
 * Each tree is read through its own {@link MstTraversal} (./traverse.ts), which
 * checks, places and remembers every node and refuses one reached twice; only the order
 * is the diff's own: both trees in step, layer by layer, so that a subtree
 * common to both is seen at the same layer and never entered.
 * {@link proofNodesFor} is a key search along one path, not a traversal.
 *
 * The old tree must be one verified before; the new one need not be. Its
 * created nodes are checked at their places by its traversal, and a common
 * subtree, verified at its old place, is checked to fit its new one: the same
 * layer (it is matched only at its old layer) and every key inside the new
 * range. Its keys lie inside its old range, so only a side where the new range
 * is narrower needs the subtree's smallest or largest key, read down its edge
 * (an insert narrows the ranges of the subtrees next to the new key, one per
 * layer at most). A diff that succeeds therefore proves the new tree's
 * structure as a whole walk would (docs/ARCHITECTURE.md, "Verification in
 * proportion to the change", gives the argument); ../verify-incremental.ts
 * builds on that.
 */
import type { CID } from 'multiformats/cid'
import { MissingBlockError, MstInvalidError } from '../../errors.ts'
import type { ReadonlyBlockStore } from '../block-store.ts'
import { cidKey } from '../cid.ts'
import { DEFAULT_MAX_NODE_ENTRIES, getBlocks, isPromise, rootLayer } from './check.ts'
import { keyHeight } from './key.ts'
import { decodeMstNode, type MstNode } from './node.ts'
import { invertCommitOps, type CommitOp } from './proof.ts'
import { MstTraversal, type MstPlace, type MstVisit } from './traverse.ts'

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

interface Pending {
  place: MstPlace
  visit?: MstVisit
}

/**
 * Diffs the tree at `before` (`null`: nothing) against the tree at `after`.
 * Throws {@link MissingBlockError} for a changed node the store lacks and
 * MstInvalidError / InvalidRecordPathError for a broken one.
 */
export async function diffMst (store: ReadonlyBlockStore, before: CID | null, after: CID, options: DiffMstOptions = {}): Promise<MstDiff> {
  const { signal } = options
  const maxNodeEntries = options.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES
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
  // one traversal per tree: each side's nodes are checked and placed by it, and
  // remembered: a subtree common to both trees is placed but never entered, so
  // its checks cannot catch it being linked twice
  const traversals = [before, after].map(root => root === null ? undefined : new MstTraversal(root, { maxNodeEntries, remember: true }))
  // levels[side][layer]: nodes of that side waiting at that layer
  const levels: [Pending[][], Pending[][]] = [[], []]

  const roots: Array<{ traversal: MstTraversal, side: 0 | 1 }> = []
  for (const side of [1, 0] as const) {
    const traversal = traversals[side]
    if (traversal !== undefined) roots.push({ traversal, side })
  }
  let rootAnswers = getBlocks(store, roots.map(r => r.traversal.root.cid), getOptions)
  if (isPromise(rootAnswers)) rootAnswers = await rootAnswers
  let top = -1
  for (let i = 0; i < roots.length; i++) {
    const { traversal, side } = roots[i]
    const place = traversal.root
    const bytes = rootAnswers[i]
    if (bytes === undefined) {
      traversal.missing(place)
      continue
    }
    const visit = traversal.enter(place, bytes)
    const level = (levels[side][place.layer + 1] ??= [])
    level.push({ place, visit })
    if (place.layer > top) top = place.layer
  }

  for (let layer = top; layer >= -1; layer--) {
    const olds = levels[0][layer + 1] ?? []
    const news = levels[1][layer + 1] ?? []
    if (olds.length === 0 && news.length === 0) continue
    // A node on both sides at the same layer is the same subtree: skip it whole.
    const oldPlaces = new Map(olds.map(item => [cidKey(item.place.cid), item.place]))
    const common = new Set<string>()
    for (const item of news) {
      const key = cidKey(item.place.cid)
      const oldPlace = oldPlaces.get(key)
      if (oldPlace === undefined) continue
      await checkFits(store, oldPlace, item.place, getOptions)
      common.add(key)
    }
    const work: Array<{ item: Pending, side: 0 | 1 }> = []
    for (const item of olds) if (!common.has(cidKey(item.place.cid))) work.push({ item, side: 0 })
    for (const item of news) if (!common.has(cidKey(item.place.cid))) work.push({ item, side: 1 })

    const toLoad = work.filter(w => w.item.visit === undefined)
    if (toLoad.length > 0) {
      signal?.throwIfAborted()
      let answers = getBlocks(store, toLoad.map(w => w.item.place.cid), getOptions)
      if (isPromise(answers)) answers = await answers
      for (let i = 0; i < toLoad.length; i++) {
        const { item, side } = toLoad[i]
        const traversal = traversals[side] as MstTraversal
        const bytes = answers[i]
        if (bytes === undefined) {
          traversal.missing(item.place)
          continue
        }
        item.visit = traversal.enter(item.place, bytes)
      }
    }

    for (const { item, side } of work) {
      const { node, left, rights } = item.visit as MstVisit
      if (side === 1) {
        createdNodes.push(item.place.cid)
        newNodes.set(cidKey(item.place.cid), node)
      } else {
        deletedNodes.push(item.place.cid)
      }
      const values = side === 1 ? newValues : oldValues
      const { entries } = node
      const below = (levels[side][layer] ??= [])
      if (left !== null) below.push({ place: left })
      for (let j = 0; j < entries.length; j++) {
        const entry = entries[j]
        values.set(entry.key, entry.value)
        const right = rights[j]
        if (right !== null) below.push({ place: right })
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
 * Checks that a subtree of the old tree, verified at `oldPlace`, fits `newPlace`
 * at the same layer: every key inside the new range. Reads the subtree's edge
 * only on a side where the new range is narrower than the old.
 */
async function checkFits (store: ReadonlyBlockStore, oldPlace: MstPlace, newPlace: MstPlace, options: { signal?: AbortSignal }): Promise<void> {
  const { after, before } = newPlace
  if (after !== null && (oldPlace.after === null || oldPlace.after < after)) {
    const first = await edgeKey(store, oldPlace, 'first', options)
    if (first <= after) {
      throw new MstInvalidError(`subtree of the previous tree reused with key not after ${JSON.stringify(after)} as its new place requires (linked from ${String(newPlace.parent)})`, { cid: newPlace.cid, rpath: first })
    }
  }
  if (before !== null && (oldPlace.before === null || oldPlace.before > before)) {
    const last = await edgeKey(store, oldPlace, 'last', options)
    if (last >= before) {
      throw new MstInvalidError(`subtree of the previous tree reused with key not before ${JSON.stringify(before)} as its new place requires (linked from ${String(newPlace.parent)})`, { cid: newPlace.cid, rpath: last })
    }
  }
}

/**
 * The first or last key of a verified subtree, found down its left or right
 * edge (at most one node per layer).
 */
async function edgeKey (store: ReadonlyBlockStore, place: MstPlace, edge: 'first' | 'last', options: { signal?: AbortSignal }): Promise<string> {
  let cid = place.cid
  for (let layer = place.layer; layer >= 0; layer--) {
    let bytes = store.get(cid, options)
    if (isPromise(bytes)) bytes = await bytes
    if (bytes === undefined) throw new MissingBlockError(cid, { what: `MST node of the previous tree (layer ${layer}, its ${edge} key)` })
    const { left, entries } = decodeMstNode(bytes, cid)
    const n = entries.length
    const next = edge === 'first' ? left : n > 0 ? entries[n - 1].right : left
    if (next === null) {
      if (n === 0) break
      return edge === 'first' ? entries[0].key : entries[n - 1].key
    }
    cid = next
  }
  throw new MstInvalidError(`subtree of the previous tree has no ${edge} key`, { cid: place.cid })
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
