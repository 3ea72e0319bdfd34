/**
 * Makes a repo's MST complete in the local store, fetching only what is missing:
 * a breadth-first walk that handles one tree level at a time, so each level's
 * missing nodes and records go out as one wide request through the fetch chain
 * rather than one block at a time.
 *
 * Subtrees (and records) the caller already knows to be complete (`known`: blocks
 * held by the repo's previous verified state) are not descended, which is what
 * keeps an incremental sync proportional to the change: the walk only enters nodes
 * that differ from the previous tree.
 *
 * Record blocks are checked for presence, never parsed: links inside records
 * (blobs, raw 0x55 CIDs) are not followed.
 */
import type { ReadonlyBlockStore } from '../repo/block-store.ts'
import { RAW, cidKey, type CID } from '../repo/cid.ts'
import { decodeMstNode, type MstNode } from '../repo/mst/node.ts'
import { getBlocks, hasBlocks, isPromise } from '../repo/mst/check.ts'
import type { BlockFetcher, FetchOptions } from './fetcher.ts'

export interface CompleteMstOptions {
  did: string
  signal?: AbortSignal
  /** For each CID, whether its block (and, for a node, its whole subtree) is known to be stored. */
  known?: (cids: CID[]) => Promise<boolean[]>
  /** Blocks asked of the store at once (an async store sees them all together). @default 256 */
  chunk?: number
  /** Called for each block fetched from a source (local store reads are not reported). */
  onBlock?: FetchOptions['onBlock']
  /** Called for every node visited (known subtrees are not visited), once each. */
  onNode?: (cid: CID, node: MstNode) => void
}

export interface CompleteMstResult {
  /** MST nodes visited (not counting known subtrees). */
  nodes: number
  /** Record blocks checked (not counting known ones). */
  records: number
  /** Blocks that were missing and came from a source, by source name. */
  fetched: Record<string, number>
  /** Tree levels walked. */
  depth: number
}

/**
 * Walks the MST under `root` and fetches every missing node and record block.
 *
 * @throws AllSourcesFailedError when some block cannot be found anywhere;
 * MstInvalidError / CborDecodeError for a malformed node
 */
export async function completeMst (store: ReadonlyBlockStore, fetcher: BlockFetcher, root: CID, options: CompleteMstOptions): Promise<CompleteMstResult> {
  const { did, signal } = options
  const chunk = Math.max(1, options.chunk ?? 256)
  const result: CompleteMstResult = { nodes: 0, records: 0, fetched: {}, depth: 0 }
  // nodes once each: a DAG that reuses subtrees would otherwise cost exponential work
  // before verification gets to reject it; records are deduplicated per level only
  // (a set over all of them would be as large as the repo)
  const seenNodes = new Set<string>()
  const count = (source: string): void => { result.fetched[source] = (result.fetched[source] ?? 0) + 1 }

  let frontier: CID[] = [root]
  seenNodes.add(cidKey(root))
  while (frontier.length > 0) {
    signal?.throwIfAborted()
    if (options.known !== undefined) frontier = await dropKnown(frontier, options.known)
    if (frontier.length === 0) break
    result.depth++
    result.nodes += frontier.length

    // this level's nodes: from the store, the rest in one request
    const bytesOf = new Map<string, Uint8Array>()
    const absent: CID[] = []
    for (let start = 0; start < frontier.length; start += chunk) {
      const cids = frontier.slice(start, start + chunk)
      let answers = getBlocks(store, cids, { signal })
      if (isPromise(answers)) answers = await answers
      for (let i = 0; i < cids.length; i++) {
        const bytes = answers[i]
        if (bytes === undefined) absent.push(cids[i])
        else bytesOf.set(cidKey(cids[i]), bytes)
      }
    }
    if (absent.length > 0) {
      for await (const block of fetcher.getMany(absent, { did, signal, onBlock: options.onBlock })) {
        bytesOf.set(cidKey(block.cid), block.bytes)
        count(block.source)
      }
    }

    // children and records of this level
    const next: CID[] = []
    let records: CID[] = []
    const seenRecords = new Set<string>()
    for (const cid of frontier) {
      const node = decodeMstNode(bytesOf.get(cidKey(cid)) as Uint8Array, cid)
      options.onNode?.(cid, node)
      if (node.left !== null) addOnce(next, seenNodes, node.left)
      for (const entry of node.entries) {
        if (entry.right !== null) addOnce(next, seenNodes, entry.right)
        // a raw CID would be a blob, which the walk does not fetch (verification
        // rejects it as a record)
        if (entry.value.code !== RAW) addOnce(records, seenRecords, entry.value)
      }
    }
    bytesOf.clear()

    if (options.known !== undefined) records = await dropKnown(records, options.known)
    result.records += records.length
    const missingRecords: CID[] = []
    for (let start = 0; start < records.length; start += chunk) {
      const cids = records.slice(start, start + chunk)
      let present = hasBlocks(store, cids, { signal })
      if (isPromise(present)) present = await present
      for (let i = 0; i < cids.length; i++) if (!present[i]) missingRecords.push(cids[i])
    }
    if (missingRecords.length > 0) {
      for await (const block of fetcher.getMany(missingRecords, { did, signal, onBlock: options.onBlock })) count(block.source)
    }
    frontier = next
  }
  return result
}

function addOnce (list: CID[], seen: Set<string>, cid: CID): void {
  const key = cidKey(cid)
  if (seen.has(key)) return
  seen.add(key)
  list.push(cid)
}

async function dropKnown (cids: CID[], known: (cids: CID[]) => Promise<boolean[]>): Promise<CID[]> {
  const flags = await known(cids)
  return cids.filter((_, i) => !flags[i])
}
