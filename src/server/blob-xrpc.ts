/**
 * `com.atproto.sync.getBlob` and `com.atproto.sync.listBlobs` on the public HTTP
 * server (public-server.ts), answered from what the mirror holds: a blob only while
 * the repo is served (status-policy.ts) and its stored commit references it,
 * streamed from disk and hash-checked as it goes (a blob the disk spoiled breaks off
 * and is removed). Loaded only when the node serves HTTP.
 */
import { Readable } from 'node:stream'
import { InvalidRequestError, type Server as XrpcServer } from '@atproto/xrpc-server'
import type { MirrorApiOptions } from '../mirror/api.ts'
import type { CID } from '../repo/cid.ts'
import { cidParam } from './sync-api.ts'

/** What the methods read (MirrorNode fits). */
export interface BlobReader {
  getBlob: (did: string, cid: CID, options?: MirrorApiOptions) => Promise<{ size: number, chunks: AsyncIterable<Uint8Array> }>
  listBlobs: (did: string, options?: { cursor?: string, limit?: number }) => Promise<{ cids: string[], cursor?: string }>
}

/** Registers getBlob and listBlobs, read from `reader`. */
export function blobXrpc (reader: BlobReader): (server: XrpcServer) => void {
  return (server) => {
    server.method('com.atproto.sync.getBlob', async ({ params }: { params: Record<string, unknown> }) => {
      const did = String(params.did)
      const cid = cidParam(String(params.cid))
      let blob
      try {
        blob = await reader.getBlob(did, cid)
      } catch (err) {
        throw mapError(err)
      }
      return {
        encoding: 'application/octet-stream',
        body: Readable.from(blob.chunks),
        headers: {
          'content-length': String(blob.size),
          // as a PDS answers: never sniffed, rendered or run by a browser
          'x-content-type-options': 'nosniff',
          'content-disposition': `attachment; filename="${cid.toString()}"`,
          'content-security-policy': "default-src 'none'; sandbox"
        }
      }
    })
    server.method('com.atproto.sync.listBlobs', async ({ params }: { params: Record<string, unknown> }) => {
      let page
      try {
        page = await reader.listBlobs(String(params.did), {
          cursor: typeof params.cursor === 'string' ? params.cursor : undefined,
          limit: typeof params.limit === 'number' ? params.limit : undefined
        })
      } catch (err) {
        throw mapError(err)
      }
      return { encoding: 'application/json', body: page }
    })
  }
}

function mapError (err: unknown): unknown {
  const name = (err as Error).name
  if (name === 'RepoNotMirroredError') return new InvalidRequestError(`Could not find repo: ${(err as Error).message}`, 'RepoNotFound')
  if (name === 'BlobNotMirroredError') return new InvalidRequestError('Blob not found', 'BlobNotFound')
  return err
}
