/**
 * Structure rules every MST node must meet where it sits in the tree, shared by
 * the traversal (./traverse.ts) and the editor, plus block loading helpers that
 * stay synchronous when the store is.
 */
import type { CID } from 'multiformats/cid'
import { MstInvalidError } from '../../errors.ts'
import type { BlockStoreOptions, ReadonlyBlockStore } from '../block-store.ts'
import { keyHeight } from './key.ts'
import type { MstNode } from './node.ts'

/**
 * Most entries one node may hold. Key heights are random (a run of n keys all
 * below the next layer has probability (3/4)^n), so an honest tree never gets
 * near this; a larger node means keys were mined to bloat the tree.
 */
export const DEFAULT_MAX_NODE_ENTRIES = 1024

/** Where a node sits: its layer and the open key range its subtree covers. */
export interface NodePlace {
  layer: number
  /** Every key of the subtree is greater than this (`null`: no bound). */
  after: string | null
  /** Every key of the subtree is less than this (`null`: no bound). */
  before: string | null
  /** Whether this is the top of the tree. */
  root: boolean
}

/**
 * The layer of a root node: the height of its keys, or -1 for the empty tree.
 * Throws for an entry-less root that points to a subtree (the spec forbids it).
 */
export function rootLayer (node: MstNode, cid: CID): number {
  if (node.entries.length > 0) return keyHeight(node.entries[0].key)
  if (node.left !== null) throw new MstInvalidError('root is an entry-less node that only points to a subtree', { cid })
  return -1
}

/**
 * Checks a decoded node against its place: entry count, empty nodes, every key's
 * height equal to the layer, keys inside the subtree's range, no subtree links
 * below layer 0.
 */
export function checkNode (node: MstNode, cid: CID, place: NodePlace, maxEntries: number = DEFAULT_MAX_NODE_ENTRIES): void {
  const { entries } = node
  const { layer } = place
  if (entries.length > maxEntries) {
    throw new MstInvalidError(`node has ${entries.length} entries, more than the limit of ${maxEntries}`, { cid })
  }
  if (entries.length === 0) {
    if (place.root) {
      if (node.left !== null) throw new MstInvalidError('root is an entry-less node that only points to a subtree', { cid })
    } else if (node.left === null) {
      throw new MstInvalidError('empty node below the root', { cid })
    }
  }
  if (layer === 0 && node.left !== null) throw new MstInvalidError('subtree link below layer 0', { cid })
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i]
    const height = keyHeight(entry.key)
    if (height !== layer) {
      throw new MstInvalidError(`key height ${height} does not match node layer ${layer}`, { cid, rpath: entry.key })
    }
    if (layer === 0 && entry.right !== null) throw new MstInvalidError('subtree link below layer 0', { cid, rpath: entry.key })
  }
  if (entries.length > 0) {
    const first = entries[0].key
    const last = entries[entries.length - 1].key
    if (place.after !== null && first <= place.after) {
      throw new MstInvalidError(`key not after ${JSON.stringify(place.after)} as its place in the tree requires`, { cid, rpath: first })
    }
    if (place.before !== null && last >= place.before) {
      throw new MstInvalidError(`key not before ${JSON.stringify(place.before)} as its place in the tree requires`, { cid, rpath: last })
    }
  }
}

/** Whether a store answer is a promise (async store) rather than a value. */
export function isPromise<T> (value: T | Promise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown })?.then === 'function'
}

/**
 * Gets many blocks at once: one round of concurrent requests for an async
 * store, no promise at all for a synchronous one.
 */
export function getBlocks (store: ReadonlyBlockStore, cids: readonly CID[], options: BlockStoreOptions = {}): Array<Uint8Array | undefined> | Promise<Array<Uint8Array | undefined>> {
  const answers = new Array<Uint8Array | undefined | Promise<Uint8Array | undefined>>(cids.length)
  let pending = false
  for (let i = 0; i < cids.length; i++) {
    const answer = store.get(cids[i], options)
    if (isPromise(answer)) pending = true
    answers[i] = answer
  }
  if (pending) return Promise.all(answers)
  return answers as Array<Uint8Array | undefined>
}

/** Asks whether the store has many blocks at once (see {@link getBlocks}). */
export function hasBlocks (store: ReadonlyBlockStore, cids: readonly CID[], options: BlockStoreOptions = {}): boolean[] | Promise<boolean[]> {
  const answers = new Array<boolean | Promise<boolean>>(cids.length)
  let pending = false
  for (let i = 0; i < cids.length; i++) {
    const answer = store.has(cids[i], options)
    if (isPromise(answer)) pending = true
    answers[i] = answer
  }
  if (pending) return Promise.all(answers)
  return answers as boolean[]
}
