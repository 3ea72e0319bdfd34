/**
 * A trustless IPFS gateway (specs.ipfs.tech/http-gateways/trustless-gateway) over the
 * blocks the mirror serves: `GET /ipfs/{cid}` answers a raw block
 * (`?format=raw` or `Accept: application/vnd.ipld.raw`) or a CAR (`?format=car` or
 * `Accept: application/vnd.ipld.car`). `format` wins over `Accept`; neither is a 400
 * (strict trustless mode: no deserialized answers). Paths under the CID are not
 * supported (400).
 *
 * A block is served when at least one repo holding it (the holder index) may be
 * served by the status policy: blocks of taken-down, deleted, suspended or
 * deactivated repos, and blocks no repo holds, are 404, the same as absent ones.
 * Bytes leave through the store's hash-checked read.
 *
 * CARs are version 1, depth-first, without duplicates (`order=dfs; dups=n`), with the
 * asked CID as root. `dag-scope=block` (and `entity`, which for non-UnixFS data is
 * the same) is the block alone; `all` (the default) is the block and, depth-first,
 * every block it links to that the mirror serves. Links to blocks the mirror does not
 * hold (blobs, say) are left out rather than failing the answer: a client verifies
 * what it gets and sees what is missing. A whole repo (`/ipfs/<commit>?format=car`)
 * is the commit and its tree; records' links are followed the same way.
 *
 * Blobs (raw CIDs a served repo's records reference) are served too: small ones are
 * blocks like any other; those kept in files (`blobs`) are streamed from disk as
 * `format=raw`, hash-checked on the way, and go into a CAR up to 1 MiB.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { logger } from '@libp2p/logger'
import type { Block } from '../repo/block-store.ts'
import { writeCar } from '../repo/car.ts'
import { CID, DAG_CBOR, RAW, SHA2_256, asCid, cidKey } from '../repo/cid.ts'
import { decodeCbor } from '../repo/cbor.ts'
import { isServable } from '../mirror/status-policy.ts'
import type { MirrorStore } from '../mirror/store.ts'
import type { PublicRoute } from './public-server.ts'
import { sendError } from './public-server.ts'
import type { HolderIndex } from './sync-api.ts'

const log = logger('atmirror:http:gateway')

export interface GatewayComponents {
  store: Pick<MirrorStore, 'getState' | 'getVerified'>
  holders: HolderIndex
  /** Blobs kept outside the blockstore (MirrorStore.blobs): streamed, hash-checked as they are read. */
  blobs?: { read: (cid: CID, options?: { signal?: AbortSignal }) => Promise<{ size?: number, chunks: AsyncIterable<Uint8Array> } | undefined> }
}

/** Largest file blob put into a CAR (in memory); `format=raw` streams any size. */
const MAX_CAR_BLOB = 1024 * 1024

/** Most blocks one `dag-scope=all` CAR holds (a large repo is a few million). */
const MAX_CAR_BLOCKS = 5_000_000

const RAW_TYPE = 'application/vnd.ipld.raw'
const CAR_TYPE = 'application/vnd.ipld.car'
const IMMUTABLE = 'public, max-age=29030400, immutable'

/** The `/ipfs` route of the public server. */
export function gatewayRoute (components: GatewayComponents): PublicRoute {
  const { store, holders } = components

  /** Whether `cid` may be handed out: some repo holding it is servable. `servable` caches per DID. */
  const served = async (cid: CID, servable: Map<string, boolean>, signal: AbortSignal): Promise<boolean> => {
    for await (const did of holders.holders(cid, { signal })) {
      let ok = servable.get(did)
      if (ok === undefined) {
        ok = isServable(await store.getState(did))
        servable.set(did, ok)
      }
      if (ok) return true
    }
    return false
  }

  const read = async (cid: CID, servable: Map<string, boolean>, signal: AbortSignal): Promise<Uint8Array | undefined> => {
    if (!await served(cid, servable, signal)) return undefined
    return await store.getVerified(cid, { signal, repair: 'background' })
  }

  /** The block and, depth-first, every servable block it links to, each once. */
  async function * dag (root: Block, servable: Map<string, boolean>, signal: AbortSignal): AsyncGenerator<Block> {
    const seen = new Set<string>([cidKey(root.cid)])
    const stack: Block[] = [root]
    let count = 0
    while (stack.length > 0) {
      const block = stack.pop() as Block
      yield block
      if (++count >= MAX_CAR_BLOCKS) {
        log('CAR of %c stopped at %d blocks', root.cid, count)
        return
      }
      if (block.cid.code !== DAG_CBOR) continue
      const children: Block[] = []
      for (const link of links(decodeCbor(block.bytes, { cid: block.cid, rejectFloats: false }))) {
        const key = cidKey(link)
        if (seen.has(key)) continue
        seen.add(key)
        const bytes = await read(link, servable, signal)
        if (bytes !== undefined) children.push({ cid: link, bytes })
      }
      for (let i = children.length - 1; i >= 0; i--) stack.push(children[i])
    }
  }

  return {
    path: '/ipfs',
    handler: async (req: IncomingMessage, res: ServerResponse, url: URL) => {
      const parts = url.pathname.split('/').slice(2)
      if (parts.length === 0 || parts[0] === '') {
        sendError(res, 400, 'InvalidRequest', 'expected /ipfs/{cid}')
        return
      }
      if (parts.length > 1 && !(parts.length === 2 && parts[1] === '')) {
        sendError(res, 400, 'InvalidRequest', 'paths under a CID are not supported by this gateway: ask for the CID itself')
        return
      }
      let cid: CID
      try {
        cid = CID.parse(parts[0])
      } catch {
        sendError(res, 400, 'InvalidRequest', `not a CID: ${JSON.stringify(parts[0].slice(0, 100))}`)
        return
      }
      const format = responseFormat(url, req.headers.accept)
      if (format === undefined) {
        sendError(res, 400, 'InvalidRequest', `ask for ?format=raw or ?format=car (or Accept: ${RAW_TYPE} / ${CAR_TYPE}): this gateway serves verifiable answers only`)
        return
      }
      const scope = url.searchParams.get('dag-scope') ?? 'all'
      if (format === 'car' && scope !== 'all' && scope !== 'block' && scope !== 'entity') {
        sendError(res, 400, 'InvalidRequest', `dag-scope must be block, entity or all, got ${JSON.stringify(scope.slice(0, 50))}`)
        return
      }
      const controller = new AbortController()
      res.once('close', () => { controller.abort() })
      const servable = new Map<string, boolean>()
      // the mirror stores sha2-256 blocks of these two codecs only
      let bytes = (cid.multihash.code !== SHA2_256 || (cid.code !== DAG_CBOR && cid.code !== RAW))
        ? undefined
        : await read(cid, servable, controller.signal)
      if (bytes === undefined && cid.code === RAW && components.blobs !== undefined && await served(cid, servable, controller.signal)) {
        const blob = await components.blobs.read(cid, { signal: controller.signal })
        if (blob !== undefined && format === 'raw') {
          await streamBlob(req, res, cid, blob, controller.signal)
          return
        }
        if (blob !== undefined && (blob.size ?? Infinity) <= MAX_CAR_BLOB) {
          const parts: Uint8Array[] = []
          for await (const part of blob.chunks) parts.push(part)
          bytes = Buffer.concat(parts)
        }
      }
      if (bytes === undefined) {
        sendError(res, 404, 'NotFound', `block not found: ${cid.toString()}`)
        return
      }
      const name = cid.toString()
      res.setHeader('cache-control', IMMUTABLE)
      res.setHeader('x-content-type-options', 'nosniff')
      res.setHeader('x-ipfs-path', `/ipfs/${name}`)
      res.setHeader('vary', 'Accept')
      if (format === 'raw') {
        res.writeHead(200, {
          'content-type': RAW_TYPE,
          'content-length': bytes.length,
          'content-disposition': `attachment; filename="${name}.bin"`,
          etag: `"${name}.raw"`
        })
        res.end(req.method === 'HEAD' ? undefined : bytes)
        return
      }
      res.writeHead(200, {
        'content-type': `${CAR_TYPE}; version=1; order=dfs; dups=n`,
        'content-disposition': `attachment; filename="${name}.car"`,
        etag: `"${name}.car.${scope === 'all' ? 'all' : 'block'}"`
      })
      if (req.method === 'HEAD') {
        res.end()
        return
      }
      const root = { cid, bytes }
      const blocks = scope === 'all' ? dag(root, servable, controller.signal) : [root]
      try {
        await pipeline(Readable.from(writeCar([cid], blocks)), res)
      } catch (err) {
        // committed to 200: a failure mid-stream ends the CAR early, which the client detects
        if (!controller.signal.aborted) log('CAR of %c ended early - %e', cid, err)
      }
    }
  }
}

/** A file blob as `format=raw`, streamed; a blob the disk spoiled ends the answer early (and is removed by the read). */
async function streamBlob (req: IncomingMessage, res: ServerResponse, cid: CID, blob: { size?: number, chunks: AsyncIterable<Uint8Array> }, signal: AbortSignal): Promise<void> {
  const name = cid.toString()
  res.setHeader('cache-control', IMMUTABLE)
  res.setHeader('x-content-type-options', 'nosniff')
  res.setHeader('x-ipfs-path', `/ipfs/${name}`)
  res.setHeader('vary', 'Accept')
  res.writeHead(200, {
    'content-type': RAW_TYPE,
    ...(blob.size === undefined ? {} : { 'content-length': blob.size }),
    'content-disposition': `attachment; filename="${name}.bin"`,
    etag: `"${name}.raw"`
  })
  if (req.method === 'HEAD') {
    await blob.chunks[Symbol.asyncIterator]().return?.()
    res.end()
    return
  }
  try {
    await pipeline(Readable.from(blob.chunks), res)
  } catch (err) {
    if (!signal.aborted) log('blob %c ended early - %e', cid, err)
  }
}

/** `raw`, `car`, or undefined when the request asks for neither. */
function responseFormat (url: URL, accept: string | undefined): 'raw' | 'car' | undefined {
  const format = url.searchParams.get('format')
  if (format === 'raw' || format === 'car') return format
  if (format !== null) return undefined
  for (const part of (accept ?? '').split(',')) {
    const type = part.split(';')[0].trim().toLowerCase()
    if (type === RAW_TYPE) return 'raw'
    if (type === CAR_TYPE) return 'car'
  }
  return undefined
}

/** Every CID link in a decoded value, in document order. */
function * links (value: unknown): Generator<CID> {
  const cid = asCid(value)
  if (cid !== null) {
    yield cid
    return
  }
  if (Array.isArray(value)) {
    for (const item of value) yield * links(item)
  } else if (value !== null && typeof value === 'object' && !(value instanceof Uint8Array)) {
    for (const item of Object.values(value)) yield * links(item)
  }
}
