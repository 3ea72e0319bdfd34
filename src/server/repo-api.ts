/**
 * `com.atproto.repo` read methods (getRecord, listRecords, describeRepo) from the
 * mirror's verified blocks, so an app reads records from a mirror the way it reads
 * them from a PDS: records are decoded from DRISL and written in atproto's JSON form
 * (`$link`, `$bytes`; repo/data-model.ts). The repo is named by DID or by the handle
 * stored with it (no network lookup). Statuses follow the status policy as in
 * sync-api.ts; a record the tree does not hold is `RecordNotFound` (400).
 *
 * `describeRepo`'s `didDoc` comes from the identity resolver (cached, and it may need
 * the PLC directory); when that fails it is a minimal document built from what the
 * mirror stored (id, handle, PDS), with `handleIsCorrect` false.
 */
import { InvalidRequestError, type Server as XrpcServer } from '@atproto/xrpc-server'
import { decodeCbor } from '../repo/cbor.ts'
import { CID } from '../repo/cid.ts'
import { dataModelToJson } from '../repo/data-model.ts'
import { MstEditor } from '../repo/mst/mutate.ts'
import { listMstRange } from '../repo/mst/range.ts'
import type { IdentityResolver } from '../identity/resolver.ts'
import type { MirrorStore, RepoState } from '../mirror/store.ts'
import { servedState } from './sync-api.ts'

export interface RepoApiComponents {
  store: MirrorStore
  /** For describeRepo's DID document. */
  identity?: IdentityResolver
}

/** Longest a describeRepo waits for the DID document before answering with the stored facts. */
const DID_DOC_TIMEOUT_MS = 3_000

/** Registers the com.atproto.repo read methods. */
export function repoApi (components: RepoApiComponents): (server: XrpcServer) => void {
  const { store, identity } = components

  /** The served state of a repo named by DID or stored handle. */
  const repoState = async (repo: string): Promise<RepoState> => {
    if (repo.startsWith('did:')) return await servedState(store, repo)
    const handle = repo.toLowerCase()
    const state = (await store.listStates()).find(s => s.handle?.toLowerCase() === handle)
    if (state === undefined) throw new InvalidRequestError(`Could not find repo: ${repo}`, 'RepoNotFound')
    return await servedState(store, state.did)
  }

  /** A record's JSON value, read through the hash-checked store. */
  const recordValue = async (state: RepoState, rpath: string, cid: CID, signal: AbortSignal): Promise<unknown> => {
    const bytes = await store.getVerified(cid, { did: state.did, signal })
    if (bytes === undefined) throw new InvalidRequestError(`Could not locate record: at://${state.did}/${rpath}`, 'RecordNotFound')
    return dataModelToJson(decodeCbor(bytes, { cid }))
  }

  return (server) => {
    server.method('com.atproto.repo.getRecord', async ({ params, signal }) => {
      const state = await repoState(params.repo as string)
      const collection = params.collection as string
      const rkey = params.rkey as string
      const rpath = `${collection}/${rkey}`
      const uri = `at://${state.did}/${rpath}`
      const blocks = store.verifiedBlocks({ did: state.did, signal })
      let cid: CID | null
      try {
        cid = await new MstEditor(blocks).get(CID.parse(state.data), rpath, { signal })
      } catch (err) {
        if ((err as Error).name === 'InvalidRecordPathError') throw new InvalidRequestError(`invalid record path: ${rpath}`)
        throw err
      }
      if (cid === null || (params.cid !== undefined && params.cid !== cid.toString())) {
        throw new InvalidRequestError(`Could not locate record: ${uri}`, 'RecordNotFound')
      }
      return { encoding: 'application/json', body: { uri, cid: cid.toString(), value: await recordValue(state, rpath, cid, signal) } }
    })

    server.method('com.atproto.repo.listRecords', async ({ params, signal }) => {
      const state = await repoState(params.repo as string)
      const collection = params.collection as string
      const limit = (params.limit as number | undefined) ?? 50
      const reverse = params.reverse === true
      const cursor = params.cursor as string | undefined
      // the collection's keys lie between `collection/` and `collection0` ('0' follows '/')
      const low = `${collection}/`
      const high = `${collection}0`
      const cursorKey = cursor === undefined ? undefined : `${collection}/${cursor}`
      // the PDS lists newest first by default: descending rkeys, `reverse` ascending
      const entries = await listMstRange(store.verifiedBlocks({ did: state.did, signal }), CID.parse(state.data), reverse
        ? { after: cursorKey ?? low, before: high, limit, signal }
        : { after: low, before: cursorKey ?? high, limit, reverse: true, signal })
      const records = []
      for (const entry of entries) {
        records.push({ uri: `at://${state.did}/${entry.key}`, cid: entry.cid.toString(), value: await recordValue(state, entry.key, entry.cid, signal) })
      }
      const last = entries[entries.length - 1]
      return {
        encoding: 'application/json',
        body: { records, ...(entries.length === limit && last !== undefined ? { cursor: last.key.slice(low.length) } : {}) }
      }
    })

    server.method('com.atproto.repo.describeRepo', async ({ params, signal }) => {
      const state = await repoState(params.repo as string)
      const blocks = store.verifiedBlocks({ did: state.did, signal })
      const data = CID.parse(state.data)
      // one seek per collection: the first key after the previous collection's range
      const collections: string[] = []
      let after: string | undefined
      while (true) {
        const [next] = await listMstRange(blocks, data, { after, limit: 1, signal })
        if (next === undefined) break
        const collection = next.key.slice(0, next.key.indexOf('/'))
        collections.push(collection)
        after = `${collection}/\u{10FFFF}`
      }
      let didDoc: unknown
      let handleIsCorrect = false
      let handle = state.handle
      try {
        const id = await identity?.resolve(state.did, { signal: AbortSignal.any([signal, AbortSignal.timeout(DID_DOC_TIMEOUT_MS)]) })
        if (id !== undefined) {
          didDoc = id.document
          handleIsCorrect = id.handleVerified
          handle = id.handle ?? handle
        }
      } catch {
        // the stored facts below
      }
      didDoc ??= {
        id: state.did,
        ...(state.handle === undefined ? {} : { alsoKnownAs: [`at://${state.handle}`] }),
        ...(state.pds === undefined ? {} : { service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: state.pds }] })
      }
      return {
        encoding: 'application/json',
        body: { handle: handle ?? 'handle.invalid', did: state.did, didDoc, collections, handleIsCorrect }
      }
    })
  }
}
