/**
 * Keys of a tree within a range, in key order (or reversed), up to a limit: what a
 * paginated listing (`com.atproto.repo.listRecords`, the collections of
 * `describeRepo`) reads. Unlike the whole-tree readers (traverse.ts), it enters only
 * the subtrees whose key range overlaps the asked one, so a page costs the tree's
 * depth plus the page, not the repo. Nodes are decoded strictly; no structure
 * checks beyond that (the tree was verified when stored).
 */
import { MissingBlockError } from '../../errors.ts'
import type { ReadonlyBlockStore } from '../block-store.ts'
import type { CID } from '../cid.ts'
import { isPromise } from './check.ts'
import { decodeMstNode, type MstNode } from './node.ts'

export interface MstRangeOptions {
  /** Only keys strictly after this one. */
  after?: string
  /** Only keys strictly before this one. */
  before?: string
  /** Descending key order. @default false */
  reverse?: boolean
  /** Most entries returned. */
  limit: number
  signal?: AbortSignal
}

/** Up to `limit` entries of the tree at `root` with `after < key < before`, in order. */
export async function listMstRange (store: ReadonlyBlockStore, root: CID, options: MstRangeOptions): Promise<Array<{ key: string, cid: CID }>> {
  const { after, before, limit, signal } = options
  const reverse = options.reverse === true
  const out: Array<{ key: string, cid: CID }> = []
  if (limit <= 0) return out
  const load = async (cid: CID): Promise<MstNode> => {
    signal?.throwIfAborted()
    let bytes = store.get(cid, { signal })
    if (isPromise(bytes)) bytes = await bytes
    if (bytes === undefined) throw new MissingBlockError(cid, { what: 'MST node' })
    return decodeMstNode(bytes, cid)
  }
  /** Whether the open interval (lo, hi) can hold a key in range. */
  const overlaps = (lo: string | undefined, hi: string | undefined): boolean =>
    !(hi !== undefined && after !== undefined && hi <= after) && !(lo !== undefined && before !== undefined && lo >= before)
  const inRange = (key: string): boolean => (after === undefined || key > after) && (before === undefined || key < before)

  /** Visits one node; false once the listing is complete. */
  const visit = async (cid: CID, lo: string | undefined, hi: string | undefined): Promise<boolean> => {
    const node = await load(cid)
    const { entries } = node
    // the node in order: left subtree, then each entry and the subtree to its right
    const items: Array<{ sub: CID | null, lo: string | undefined, hi: string | undefined } | { key: string, cid: CID }> = []
    items.push({ sub: node.left, lo, hi: entries[0]?.key ?? hi })
    for (let i = 0; i < entries.length; i++) {
      items.push({ key: entries[i].key, cid: entries[i].value })
      items.push({ sub: entries[i].right, lo: entries[i].key, hi: entries[i + 1]?.key ?? hi })
    }
    if (reverse) items.reverse()
    for (const item of items) {
      if ('sub' in item) {
        if (item.sub === null || !overlaps(item.lo, item.hi)) continue
        if (!await visit(item.sub, item.lo, item.hi)) return false
        continue
      }
      if (inRange(item.key)) {
        out.push({ key: item.key, cid: item.cid })
        if (out.length >= limit) return false
      } else if (reverse ? (after !== undefined && item.key <= after) : (before !== undefined && item.key >= before)) {
        return false // past the end of the range: nothing further can be in it
      }
    }
    return true
  }
  await visit(root, undefined, undefined)
  return out
}
