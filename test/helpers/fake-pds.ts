/**
 * A small PDS + PLC stand-in on 127.0.0.1 for tests that need a PDS to misbehave
 * (and for profiling the syncer without building an account on a real PDS).
 *
 * It serves, from repos made by @atproto/repo (test/helpers/evolving-repo.ts):
 * - `GET /<did>`: the DID document (PLC directory style), naming this server as PDS;
 * - `com.atproto.sync.getLatestCommit`, `getBlocks` (400 "Could not find cids" like
 *   the reference PDS), `getRepo` (with `since`: the blocks of the current version
 *   that the version at that rev lacked), `getBlob` (blobs set with `setBlob`).
 *
 * Any route can be overridden per test with `handle(route, fn)`; `requests` logs
 * what was asked.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Keypair } from '@atproto/crypto'
import { CID } from 'multiformats/cid'
import { joinCar, splitCar } from './car-tools.ts'

export type Route = 'did' | 'getLatestCommit' | 'getBlocks' | 'getRepo' | 'getBlob'

export interface RepoVersion {
  commit: CID
  rev: string
  /** The whole repo as a CAR (commit first root). */
  car: Uint8Array
}

export type RouteHandler = (req: IncomingMessage, res: ServerResponse, url: URL, fallback: () => Promise<void>) => void | Promise<void>

export interface FakePds {
  /** `http://localhost:PORT`: both the PLC directory and the PDS. */
  url: string
  /** Serves `did` with `keypair`'s key; `version` becomes its current repo (earlier versions are kept for `since`). */
  setRepo: (did: string, keypair: Keypair, version: RepoVersion) => void
  /** Serves `bytes` as a blob (`getBlob`, any DID). */
  setBlob: (cid: string, bytes: Uint8Array) => void
  /** The PDS that `did`'s document names from now on (an account that moved). @default this server */
  setPdsEndpoint: (did: string, pds: string) => void
  /** Overrides a route until `reset()`. */
  handle: (route: Route, fn: RouteHandler) => void
  /** Drops route overrides and the request log. */
  reset: () => void
  requests: Array<{ route: Route | 'other', url: string }>
  /** The HTTP server (tests attach a WebSocket server for a fake firehose). */
  server: Server
  stop: () => Promise<void>
}

interface Account {
  keypair: Keypair
  versions: RepoVersion[]
  blocks: Map<string, Uint8Array>
}

export async function startFakePds (): Promise<FakePds> {
  const accounts = new Map<string, Account>()
  const endpoints = new Map<string, string>()
  const overrides = new Map<Route, RouteHandler>()
  const blobs = new Map<string, Uint8Array>()
  const requests: FakePds['requests'] = []
  let url = ''

  const json = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
  const car = (res: ServerResponse, bytes: Uint8Array): void => {
    res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
    res.end(bytes)
  }

  const routes: Record<Route, (req: IncomingMessage, res: ServerResponse, u: URL) => void> = {
    did (_req, res, u) {
      const did = decodeURIComponent(u.pathname.slice(1))
      const account = accounts.get(did)
      if (account === undefined) return json(res, 404, { message: 'DID not registered' })
      json(res, 200, {
        '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1'],
        id: did,
        alsoKnownAs: [],
        verificationMethod: [{ id: `${did}#atproto`, type: 'Multikey', controller: did, publicKeyMultibase: account.keypair.did().slice('did:key:'.length) }],
        service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: endpoints.get(did) ?? url }]
      })
    },
    getLatestCommit (_req, res, u) {
      const account = accounts.get(u.searchParams.get('did') ?? '')
      const head = account?.versions.at(-1)
      if (head === undefined) return json(res, 400, { error: 'RepoNotFound', message: 'Could not find repo' })
      json(res, 200, { cid: head.commit.toString(), rev: head.rev })
    },
    getBlocks (_req, res, u) {
      const account = accounts.get(u.searchParams.get('did') ?? '')
      if (account === undefined) return json(res, 400, { error: 'RepoNotFound', message: 'Could not find repo' })
      const wanted = u.searchParams.getAll('cids')
      const missing = wanted.filter(cid => !account.blocks.has(cid))
      if (missing.length > 0) return json(res, 400, { error: 'InvalidRequest', message: `Could not find cids: ${missing.join(',')}` })
      car(res, joinCar([], wanted.map(cid => ({ cid: CID.parse(cid), bytes: account.blocks.get(cid) as Uint8Array }))))
    },
    getBlob (_req, res, u) {
      const bytes = blobs.get(u.searchParams.get('cid') ?? '')
      if (bytes === undefined) return json(res, 400, { error: 'InvalidRequest', message: 'Blob not found' })
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.byteLength })
      res.end(bytes)
    },
    getRepo (_req, res, u) {
      const account = accounts.get(u.searchParams.get('did') ?? '')
      const head = account?.versions.at(-1)
      if (account === undefined || head === undefined) return json(res, 400, { error: 'RepoNotFound', message: 'Could not find repo' })
      const since = u.searchParams.get('since')
      if (since === null) return car(res, head.car)
      const old = account.versions.filter(v => v.rev <= since).at(-1)
      const had = new Set(old === undefined ? [] : splitCar(old.car).blocks.map(b => b.cid.toString()))
      const { roots, blocks } = splitCar(head.car)
      car(res, joinCar(roots, blocks.filter(b => !had.has(b.cid.toString()))))
    }
  }

  const server: Server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://localhost')
    const route: Route | undefined = u.pathname.startsWith('/did:')
      ? 'did'
      : u.pathname.startsWith('/xrpc/com.atproto.sync.')
        ? u.pathname.slice('/xrpc/com.atproto.sync.'.length) as Route
        : undefined
    requests.push({ route: route !== undefined && route in routes ? route : 'other', url: u.pathname + u.search })
    if (route === undefined || !(route in routes)) return json(res, 404, { error: 'MethodNotImplemented', message: 'not here' })
    const fallback = async (): Promise<void> => { routes[route](req, res, u) }
    const override = overrides.get(route)
    Promise.resolve(override === undefined ? fallback() : override(req, res, u, fallback)).catch(err => {
      if (!res.headersSent) json(res, 500, { error: 'InternalServerError', message: String(err) })
      else res.destroy()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => { resolve() })
  })
  url = `http://localhost:${(server.address() as AddressInfo).port}`

  return {
    url,
    requests,
    server,
    setRepo (did, keypair, version) {
      let account = accounts.get(did)
      if (account === undefined) {
        account = { keypair, versions: [], blocks: new Map() }
        accounts.set(did, account)
      }
      account.keypair = keypair
      account.versions.push(version)
      for (const block of splitCar(version.car).blocks) account.blocks.set(block.cid.toString(), block.bytes)
    },
    setBlob (cid, bytes) {
      blobs.set(cid, bytes)
    },
    setPdsEndpoint (did, pds) {
      endpoints.set(did, pds)
    },
    handle (route, fn) {
      overrides.set(route, fn)
    },
    reset () {
      overrides.clear()
      requests.length = 0
    },
    async stop () {
      await new Promise<void>(resolve => {
        server.close(() => { resolve() })
        server.closeAllConnections()
      })
    }
  }
}
