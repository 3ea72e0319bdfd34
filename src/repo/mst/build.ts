/**
 * Building an MST from scratch. The shape of an MST depends only on its keys, so
 * the tree is built bottom-up in one pass per layer, with no insertions: a node
 * at layer L holds the keys of height L in its range and, between them, subtrees
 * of layer L - 1 for the lower keys (an entry-less node where a range has no
 * key of height L).
 */
import type { CID } from 'multiformats/cid'
import { MstInvalidError } from '../../errors.ts'
import type { Block } from '../block-store.ts'
import { cidForBytes } from '../cid.ts'
import { ensureValidMstKey, keyHeight } from './key.ts'
import { encodeMstNode, type MstEntry } from './node.ts'

/** A built tree: its root and every node block (children before parents). */
export interface BuiltMst {
  root: CID
  blocks: Block[]
}

/**
 * Builds the MST holding `entries` and returns its root CID and node blocks
 * (record blocks are the caller's). The result is the canonical tree, so the
 * root equals the reference implementation's for the same mapping. Entries may
 * come in any order; a repeated or invalid path throws
 * {@link MstInvalidError} / InvalidRecordPathError.
 */
export function buildMst (entries: Iterable<{ rpath: string, cid: CID }>): BuiltMst {
  let items = Array.from(entries, ({ rpath, cid }) => ({ rpath, cid }))
  let sorted = true
  for (let i = 1; i < items.length; i++) {
    if (items[i].rpath <= items[i - 1].rpath) {
      sorted = false
      break
    }
  }
  if (!sorted) items = items.sort((a, b) => a.rpath < b.rpath ? -1 : a.rpath > b.rpath ? 1 : 0)
  const heights = new Array<number>(items.length)
  let top = -1
  for (let i = 0; i < items.length; i++) {
    const { rpath } = items[i]
    if (i > 0 && rpath === items[i - 1].rpath) throw new MstInvalidError('duplicate key', { rpath })
    ensureValidMstKey(rpath)
    const height = keyHeight(rpath)
    heights[i] = height
    if (height > top) top = height
  }

  const blocks: Block[] = []
  const emit = (left: CID | null, nodeEntries: MstEntry[]): CID => {
    const bytes = encodeMstNode({ left, entries: nodeEntries })
    const cid = cidForBytes(bytes)
    blocks.push({ cid, bytes })
    return cid
  }
  // Items [from, to) all have heights <= layer; returns the subtree or null if empty.
  const build = (from: number, to: number, layer: number): CID | null => {
    if (from === to) return null
    let left: CID | null = null
    const nodeEntries: MstEntry[] = []
    let start = from
    for (let i = from; i < to; i++) {
      if (heights[i] !== layer) continue
      const below = build(start, i, layer - 1)
      if (nodeEntries.length === 0) left = below
      else nodeEntries[nodeEntries.length - 1].right = below
      nodeEntries.push({ key: items[i].rpath, value: items[i].cid, right: null })
      start = i + 1
    }
    const tail = build(start, to, layer - 1)
    if (nodeEntries.length === 0) left = tail
    else nodeEntries[nodeEntries.length - 1].right = tail
    return emit(left, nodeEntries)
  }

  const root = items.length === 0 ? emit(null, []) : build(0, items.length, top)
  return { root: root as CID, blocks }
}

/** The CID of the empty tree's single node. */
export const EMPTY_MST_ROOT: CID = cidForBytes(encodeMstNode({ left: null, entries: [] }))
