/**
 * Makes a repo's MST complete in the local store, fetching only what is missing.
 *
 * The walk is pipelined rather than level by level: a node's children and records
 * are asked for as soon as the node itself is at hand, so a slow block holds up only
 * its own subtree, never a whole level. Missing blocks are gathered into requests
 * through the fetch chain (nodes first: they are on the critical path, records are
 * leaves) with at most `inFlight` blocks asked at once, which keeps a Bitswap peer
 * below its per-peer want limit however wide the tree is. The order blocks arrive in
 * does not matter.
 *
 * Subtrees (and records) the caller already knows to be complete (`known`: blocks
 * held by the repo's previous verified state) are not descended, which is what
 * keeps an incremental sync proportional to the change: the walk only enters nodes
 * that differ from the previous tree.
 *
 * Record blocks are checked for presence, never parsed: links inside records
 * (blobs, raw 0x55 CIDs) are not followed.
 *
 * Nodes are entered through the repo's one MST traversal (../repo/mst/traverse.ts)
 * without its structure checks (verification runs them on the finished tree), so
 * a node linked twice fails the walk at once rather than being fetched and
 * walked again; a node the local store lacks is what the traversal reports as
 * missing, and here that means: fetch it.
 */
import type { ReadonlyBlockStore } from '../repo/block-store.ts'
import { RAW, cidKey, type CID } from '../repo/cid.ts'
import type { MstNode } from '../repo/mst/node.ts'
import { getBlocks, hasBlocks, isPromise } from '../repo/mst/check.ts'
import { MstTraversal, type MstPlace } from '../repo/mst/traverse.ts'
import type { BlockFetcher, FetchOptions } from './fetcher.ts'

export interface CompleteMstOptions {
  did: string
  /** The PDS the sync's identity names, passed to the fetch chain (see {@link FetchOptions.pds}). */
  pds?: string
  signal?: AbortSignal
  /** For each CID, whether its block (and, for a node, its whole subtree) is known to be stored. */
  known?: (cids: CID[]) => Promise<boolean[]>
  /** Blocks asked of the store at once (an async store sees them all together). @default 256 */
  chunk?: number
  /**
   * Most blocks asked of the fetch chain at once, over all requests in flight.
   * Bitswap peers drop wants beyond about 1,024 per peer: stay below.
   *
   * @default 768
   */
  inFlight?: number
  /**
   * Most blocks in one request to the fetch chain. Smaller requests keep more of
   * them in flight, so a slow block holds up fewer others.
   *
   * @default 64
   */
  batch?: number
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
  /** Tree levels walked (the deepest node's level, the root being 1). */
  depth: number
}

interface Ready {
  place: MstPlace
  bytes: Uint8Array
}

/**
 * Walks the MST under `root` and fetches every missing node and record block.
 * Returns once every request it made has settled, failed or not.
 *
 * @throws AllSourcesFailedError when some block cannot be found anywhere;
 * MstInvalidError / CborDecodeError for a malformed node
 */
export async function completeMst (store: ReadonlyBlockStore, fetcher: BlockFetcher, root: CID, options: CompleteMstOptions): Promise<CompleteMstResult> {
  const { did } = options
  const chunk = Math.max(1, options.chunk ?? 256)
  const maxInFlight = Math.max(1, options.inFlight ?? 768)
  const maxBatch = Math.max(1, options.batch ?? 64)
  // records may not take the last quarter: a node that arrives finds room for its
  // children at once rather than behind a wave of leaves
  const recordRoom = Math.max(1, Math.floor(maxInFlight * 3 / 4))
  const result: CompleteMstResult = { nodes: 0, records: 0, fetched: {}, depth: 0 }
  // Records are deduplicated while waiting or in flight only (a set over all of
  // them would be as large as the repo); nodes are placed once by the traversal.
  const outstandingRecords = new Set<string>()
  const count = (source: string): void => { result.fetched[source] = (result.fetched[source] ?? 0) + 1 }

  // one failure stops every other request: the caller discards the sync
  const stop = new AbortController()
  const signal = options.signal === undefined ? stop.signal : AbortSignal.any([options.signal, stop.signal])

  const ready: Ready[] = []
  const wantNodes: MstPlace[] = []
  const traversal = new MstTraversal(root, { check: false, onMissing: 'skip', onMissingNode: place => { wantNodes.push(place) } })
  const wantRecords: CID[] = []
  const requests = new Set<Promise<void>>()
  let nodesInFlight = 0
  let recordsInFlight = 0
  let failure: { error: unknown } | undefined
  let wake: (() => void) | undefined
  const notify = (): void => { wake?.(); wake = undefined }

  const fail = (err: unknown): void => {
    failure ??= { error: err }
    stop.abort()
    notify()
  }

  const request = (cids: CID[], nodes: Map<string, MstPlace> | undefined): void => {
    const size = cids.length
    if (nodes !== undefined) nodesInFlight += size
    else recordsInFlight += size
    const run: Promise<void> = (async (): Promise<void> => {
      for await (const block of fetcher.getMany(cids, { did, pds: options.pds, signal, onBlock: options.onBlock })) {
        count(block.source)
        const key = cidKey(block.cid)
        const place = nodes?.get(key)
        if (place !== undefined) ready.push({ place, bytes: block.bytes })
        else outstandingRecords.delete(key)
      }
    })().catch(fail).finally(() => {
      if (nodes !== undefined) nodesInFlight -= size
      else recordsInFlight -= size
      requests.delete(run)
      notify()
    })
    requests.add(run)
  }

  const dispatch = (): void => {
    while (wantNodes.length > 0 && nodesInFlight + recordsInFlight < maxInFlight) {
      const batch = wantNodes.splice(-Math.min(wantNodes.length, maxInFlight - nodesInFlight - recordsInFlight, maxBatch))
      request(batch.map(p => p.cid), new Map(batch.map(p => [cidKey(p.cid), p])))
    }
    // records go in full batches while nodes may still bring more; the rest at the end
    const more = nodesInFlight > 0 || wantNodes.length > 0 || ready.length > 0
    while (wantRecords.length > 0 && (!more || wantRecords.length >= maxBatch)) {
      const room = Math.min(recordRoom - recordsInFlight, maxInFlight - nodesInFlight - recordsInFlight)
      if (room <= 0) break
      request(wantRecords.splice(-Math.min(wantRecords.length, room, maxBatch)), undefined)
    }
  }

  /** Known-filtered nodes: the ones stored go to `ready`, the rest are missing (wanted). */
  const admitNodes = async (places: MstPlace[]): Promise<void> => {
    for (let start = 0; start < places.length; start += chunk) {
      const part = places.slice(start, start + chunk)
      let answers = getBlocks(store, part.map(place => place.cid), { signal })
      if (isPromise(answers)) answers = await answers
      for (let i = 0; i < part.length; i++) {
        const bytes = answers[i]
        if (bytes === undefined) traversal.missing(part[i])
        else ready.push({ place: part[i], bytes })
      }
    }
  }

  /** Known-filtered records: the ones not stored are wanted. */
  const admitRecords = async (cids: CID[]): Promise<void> => {
    result.records += cids.length
    for (let start = 0; start < cids.length; start += chunk) {
      const part = cids.slice(start, start + chunk)
      let present = hasBlocks(store, part, { signal })
      if (isPromise(present)) present = await present
      for (let i = 0; i < part.length; i++) {
        if (present[i]) continue
        const key = cidKey(part[i])
        if (outstandingRecords.has(key)) continue
        outstandingRecords.add(key)
        wantRecords.push(part[i])
      }
    }
  }

  const expand = async ({ place, bytes }: Ready): Promise<void> => {
    const { node, left, rights } = traversal.enter(place, bytes)
    options.onNode?.(place.cid, node)
    result.nodes++
    if (place.depth + 1 > result.depth) result.depth = place.depth + 1
    let children: MstPlace[] = []
    let records: CID[] = []
    if (left !== null) children.push(left)
    const { entries } = node
    for (let i = 0; i < entries.length; i++) {
      const right = rights[i]
      if (right !== null) children.push(right)
      // a raw CID would be a blob, which the walk does not fetch (verification
      // rejects it as a record)
      const value = entries[i].value
      if (value.code !== RAW) records.push(value)
    }
    if (options.known !== undefined && children.length + records.length > 0) {
      const flags = await options.known([...children.map(child => child.cid), ...records])
      const n = children.length
      children = children.filter((_, i) => !flags[i])
      records = records.filter((_, i) => !flags[n + i])
    }
    if (children.length > 0) await admitNodes(children)
    if (records.length > 0) await admitRecords(records)
  }

  try {
    const roots = [traversal.root]
    if (options.known === undefined || !(await options.known([root]))[0]) await admitNodes(roots)
    while (failure === undefined) {
      options.signal?.throwIfAborted()
      // stored nodes are expanded here and now; each arrival widens the frontier
      let expanded = 0
      while (ready.length > 0 && failure === undefined) {
        await expand(ready.pop() as Ready)
        // let requests go out while a large stored part of the tree is read
        if (++expanded % 64 === 0) dispatch()
      }
      if (failure !== undefined) break
      dispatch()
      if (ready.length > 0) continue
      if (requests.size === 0) {
        if (wantNodes.length === 0 && wantRecords.length === 0) break
        continue
      }
      await new Promise<void>(resolve => { wake = resolve })
    }
  } catch (err) {
    fail(err)
  }
  // nothing keeps writing once the walk is over
  while (requests.size > 0) await Promise.allSettled([...requests])
  if (failure !== undefined) throw failure.error
  return result
}
