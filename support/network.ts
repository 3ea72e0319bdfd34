/**
 * A real atproto test network on 127.0.0.1: a PLC directory (`@did-plc/server` with
 * its in-memory database) and a Bluesky PDS (`@atproto/pds`, configured the way
 * `@atproto/dev-env` configures it). Every e2e test file, and the mirror and p2p
 * benchmarks, start one network; a test file shares its network across its tests.
 *
 * Pitfalls this works around:
 * - the PDS only serves plain http when its hostname is `localhost`, so DID documents
 *   carry `http://localhost:PORT`;
 * - the PDS refuses an IP-literal PLC URL, so it is given `http://localhost:PLCPORT`;
 * - both servers' own `start()` listen on every interface; here they listen on
 *   127.0.0.1 only.
 *
 * @example
 * ```ts
 * const net = await startTestNetwork()
 * const alice = await net.createAccount('alice')
 * await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', value: { text: 'hi', createdAt: new Date().toISOString() } }])
 * const { cid, rev } = await net.getLatestCommit(alice.did)
 * await net.stop()
 * ```
 */
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Secp256k1Keypair } from '@atproto/crypto'
import { PDS, envToCfg, envToSecrets, type ServerEnvironment } from '@atproto/pds'
import { Database as PlcDatabase, PlcServer } from '@did-plc/server'

/** An account created on the test PDS. */
export interface TestAccount {
  did: string
  handle: string
  email: string
  password: string
  /** Refreshed by `login()`; valid for a couple of hours, long enough for any test. */
  accessJwt: string
  refreshJwt: string
  /** The PDS that hosts the account, once it moved (`migrateAccount`). @default the network's PDS */
  host?: string
}

/** Another PDS on the same PLC directory (see `addPds`). */
export interface TestPdsHost {
  /** `http://localhost:PORT`, as DID documents name it. */
  readonly url: string
  readonly pds: PDS
  /** Path and query of every request this PDS received, in order. */
  readonly requests: string[]
}

/** One record to create; `value.$type` defaults to `collection`. */
export interface TestRecord {
  collection: string
  rkey?: string
  value: Record<string, unknown>
}

export interface WrittenRecord {
  uri: string
  cid: string
  collection: string
  rkey: string
}

export interface WriteResult {
  records: WrittenRecord[]
  /** The repo's commit after the last batch. */
  commit: { cid: string, rev: string }
}

export interface TestNetworkInit {
  /** Handle suffix the PDS hands out. @default '.test' */
  handleDomain?: string
}

export interface TestNetwork {
  /** `http://localhost:PORT` of the PLC directory. */
  readonly plcUrl: string
  /** `http://localhost:PORT` of the PDS (as written in DID documents). */
  readonly pdsUrl: string
  readonly plcPort: number
  readonly pdsPort: number
  /** The PDS admin password (HTTP basic auth user `admin`). */
  readonly adminPassword: string
  /** The running PDS, for tests that need its internals (`pds.ctx`). Undefined while stopped. */
  readonly pds: PDS | undefined
  /** Path and query of every request the PDS received, in order (tests may clear it). */
  readonly pdsRequests: string[]
  /** Starts another PDS on the same PLC directory (stopped by `stop()`). */
  addPds: () => Promise<TestPdsHost>
  /**
   * Moves an account to another PDS, in the essential steps of the standard
   * migration: the new host creates the account for the existing DID (authorised by
   * a service token from the old host), imports the repo, the PLC document is
   * updated (the new host's rotation key, signing key and endpoint, signed with the
   * old host's rotation key), the account is activated on the new host and
   * deactivated on the old one. `account` then talks to the new host.
   */
  migrateAccount: (account: TestAccount, to: TestPdsHost) => Promise<void>
  /** Creates an account with handle `<prefix><n>.test` (n counts accounts; the prefix is at most 15 characters). */
  createAccount: (handlePrefix?: string) => Promise<TestAccount>
  /** Logs in again (new tokens); updates `account` in place and returns it. */
  login: (account: TestAccount) => Promise<TestAccount>
  /** Creates records through applyWrites, 200 per commit. */
  writeRecords: (account: TestAccount, records: TestRecord[]) => Promise<WriteResult>
  updateRecord: (account: TestAccount, record: TestRecord & { rkey: string }) => Promise<WrittenRecord & { commit: { cid: string, rev: string } }>
  deleteRecord: (account: TestAccount, collection: string, rkey: string) => Promise<{ commit: { cid: string, rev: string } }>
  /** `com.atproto.sync.getLatestCommit`: `{ cid, rev }` of the repo's head commit. */
  getLatestCommit: (did: string) => Promise<{ cid: string, rev: string }>
  /** `com.atproto.sync.getRepo`: the whole repo as CAR bytes. */
  getRepoCar: (did: string, since?: string) => Promise<Uint8Array>
  deactivateAccount: (account: TestAccount) => Promise<void>
  activateAccount: (account: TestAccount) => Promise<void>
  /** Takes the repo down (admin); `applied: false` reverses it. */
  takedownAccount: (did: string, applied?: boolean) => Promise<void>
  /**
   * Rotates the account's `#atproto` signing key: a fresh secp256k1 key replaces the
   * PDS's key file, the PLC document is updated with the PDS's PLC rotation key, and
   * (unless `commit: false`) an empty commit is written so the head is signed by the
   * new key. Returns the new key as did:key.
   */
  rotateSigningKey: (account: TestAccount, options?: { commit?: boolean }) => Promise<{ didKey: string, commit?: { cid: string, rev: string } }>
  /** Stops the PDS (PLC keeps running); data stays on disk. */
  stopPds: () => Promise<void>
  /** Starts the PDS again on the same port with the same data. */
  startPds: () => Promise<void>
  /** Stops the PLC directory (its in-memory database stays, for `startPlc`). */
  stopPlc: () => Promise<void>
  /** Starts the PLC directory again on the same port. */
  startPlc: () => Promise<void>
  /** Stops everything and removes the temp directory. */
  stop: () => Promise<void>
}

const ADMIN_PASSWORD = 'admin-pass'

/** Starts PLC + PDS on 127.0.0.1. Call `stop()` when done (in an `after` hook). */
export async function startTestNetwork (init: TestNetworkInit = {}): Promise<TestNetwork> {
  const handleDomain = init.handleDomain ?? '.test'
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-net-'))
  const dataDirectory = join(dir, 'pds')
  await mkdir(dataDirectory, { recursive: true })

  const plc = PlcServer.create({ db: PlcDatabase.mock() })
  let plcServer: Server | undefined = await listenLocal(plc.app)
  const plcPort = (plcServer.address() as AddressInfo).port
  const plcUrl = `http://localhost:${plcPort}`

  // The PDS writes its port into DID documents, so the port is chosen before it starts
  // and kept across restarts.
  const pdsPort = await freePort()
  const pdsUrl = `http://localhost:${pdsPort}`

  const envFor = async (port: number, dataDirectory: string, blobs: string): Promise<ServerEnvironment> => ({
    port,
    hostname: 'localhost',
    version: '0.0.0',
    devMode: true,
    dataDirectory,
    blobstoreDiskLocation: blobs,
    didPlcUrl: plcUrl,
    recoveryDidKey: (await Secp256k1Keypair.create()).did(),
    adminPassword: ADMIN_PASSWORD,
    jwtSecret: randomBytes(16).toString('hex'),
    serviceHandleDomains: [handleDomain],
    plcRotationKeyK256PrivateKeyHex: randomBytes(32).toString('hex'),
    inviteRequired: false,
    disableSsrfProtection: true,
    rateLimitsEnabled: false,
    // importRepo of a large generated repo (bench/incremental.ts --sync)
    maxImportSize: 256 * 1024 * 1024,
    crawlers: []
  })
  const env = await envFor(pdsPort, dataDirectory, join(dir, 'blobs'))

  let pds: PDS | undefined
  let pdsServer: Server | undefined
  const pdsRequests: string[] = []
  const hosts: Array<TestPdsHost & { server: Server }> = []

  /** What PDS.start() does, minus listening on every interface; every request is logged in `log`. */
  async function launchPds (pdsEnv: ServerEnvironment, log: string[]): Promise<{ pds: PDS, server: Server }> {
    const created = await PDS.create(envToCfg(pdsEnv), envToSecrets(pdsEnv))
    await created.ctx.sequencer.start()
    let server: Server
    try {
      // through the app's own listen: the XRPC server hooks WebSocket upgrades
      // (subscribeRepos) onto the server it returns
      server = created.app.listen(pdsEnv.port, '127.0.0.1')
      server.prependListener('request', (req) => { log.push(req.url ?? '') })
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.once('listening', () => { server.off('error', reject); resolve() })
      })
    } catch (err) {
      await created.destroy()
      throw err
    }
    server.keepAliveTimeout = 90_000
    return { pds: created, server }
  }

  async function startPds (): Promise<void> {
    if (pds !== undefined) return
    const launched = await launchPds(env, pdsRequests)
    pdsServer = launched.server
    pds = launched.pds
  }

  async function stopPds (): Promise<void> {
    const running = pds
    const server = pdsServer
    pds = undefined
    pdsServer = undefined
    if (server !== undefined) await closeServer(server)
    if (running !== undefined) await running.destroy()
  }

  try {
    await startPds()
  } catch (err) {
    if (plcServer !== undefined) await closeServer(plcServer)
    await rm(dir, { recursive: true, force: true })
    throw err
  }

  let accounts = 0

  /** An XRPC call to `init.host` (the network's PDS by default); a Uint8Array body is sent as a CAR. */
  async function xrpc<T> (method: 'GET' | 'POST', nsid: string, init: { params?: Record<string, string>, body?: unknown, auth?: string, host?: string } = {}): Promise<T> {
    const url = new URL(`/xrpc/${nsid}`, init.host ?? pdsUrl)
    for (const [key, value] of Object.entries(init.params ?? {})) url.searchParams.set(key, value)
    const headers: Record<string, string> = {}
    if (init.auth !== undefined) headers.authorization = init.auth
    const raw = init.body instanceof Uint8Array
    if (init.body !== undefined) headers['content-type'] = raw ? 'application/vnd.ipld.car' : 'application/json'
    const res = await fetch(url, {
      method,
      headers,
      body: init.body === undefined ? undefined : raw ? init.body as Uint8Array<ArrayBuffer> : JSON.stringify(init.body),
      signal: AbortSignal.timeout(60_000)
    })
    if (!res.ok) {
      const text = await res.text()
      throw new Error(`${nsid} failed: ${res.status} ${text}`)
    }
    const type = res.headers.get('content-type') ?? ''
    if (type.includes('application/json')) return await res.json() as T
    return new Uint8Array(await res.arrayBuffer()) as T
  }

  const bearer = (account: TestAccount): string => `Bearer ${account.accessJwt}`
  const hostOf = (account: TestAccount): string => account.host ?? pdsUrl
  const adminAuth = `Basic ${Buffer.from(`admin:${ADMIN_PASSWORD}`).toString('base64')}`

  function toWrite (type: 'create' | 'update', record: TestRecord): Record<string, unknown> {
    return {
      $type: `com.atproto.repo.applyWrites#${type}`,
      collection: record.collection,
      ...(record.rkey === undefined ? {} : { rkey: record.rkey }),
      value: { $type: record.collection, ...record.value }
    }
  }

  interface ApplyWritesOutput {
    commit: { cid: string, rev: string }
    results: Array<{ uri?: string, cid?: string }>
  }

  return {
    plcUrl,
    pdsUrl,
    plcPort,
    pdsPort,
    adminPassword: ADMIN_PASSWORD,
    get pds () { return pds },
    pdsRequests,

    async createAccount (handlePrefix = 'user') {
      const n = ++accounts
      // The PDS wants at least 3 characters before the domain (and at most 18).
      const name = `${handlePrefix}${String(n).padStart(Math.max(1, 3 - handlePrefix.length), '0')}`
      const handle = `${name}${handleDomain}`
      const email = `${name}@example.com`
      const password = `password-${n}`
      const out = await xrpc<{ did: string, handle: string, accessJwt: string, refreshJwt: string }>('POST', 'com.atproto.server.createAccount', {
        body: { handle, email, password }
      })
      return { did: out.did, handle: out.handle, email, password, accessJwt: out.accessJwt, refreshJwt: out.refreshJwt }
    },

    async login (account) {
      const out = await xrpc<{ accessJwt: string, refreshJwt: string }>('POST', 'com.atproto.server.createSession', {
        host: hostOf(account),
        body: { identifier: account.did, password: account.password }
      })
      account.accessJwt = out.accessJwt
      account.refreshJwt = out.refreshJwt
      return account
    },

    async writeRecords (account, records) {
      const written: WrittenRecord[] = []
      let commit: { cid: string, rev: string } | undefined
      for (let i = 0; i < records.length; i += 200) {
        const batch = records.slice(i, i + 200)
        const out = await xrpc<ApplyWritesOutput>('POST', 'com.atproto.repo.applyWrites', {
          host: hostOf(account),
          auth: bearer(account),
          body: { repo: account.did, validate: false, writes: batch.map(record => toWrite('create', record)) }
        })
        commit = out.commit
        for (const result of out.results) {
          if (result.uri === undefined || result.cid === undefined) throw new Error('applyWrites returned a result without uri/cid')
          const [collection, rkey] = result.uri.split('/').slice(-2) as [string, string]
          written.push({ uri: result.uri, cid: result.cid, collection, rkey })
        }
      }
      if (commit === undefined) throw new Error('writeRecords needs at least one record')
      return { records: written, commit }
    },

    async updateRecord (account, record) {
      const out = await xrpc<ApplyWritesOutput>('POST', 'com.atproto.repo.applyWrites', {
        host: hostOf(account),
        auth: bearer(account),
        body: { repo: account.did, validate: false, writes: [toWrite('update', record)] }
      })
      const result = out.results[0]
      if (result?.uri === undefined || result.cid === undefined) throw new Error('applyWrites returned a result without uri/cid')
      return { uri: result.uri, cid: result.cid, collection: record.collection, rkey: record.rkey, commit: out.commit }
    },

    async deleteRecord (account, collection, rkey) {
      const out = await xrpc<ApplyWritesOutput>('POST', 'com.atproto.repo.applyWrites', {
        host: hostOf(account),
        auth: bearer(account),
        body: { repo: account.did, writes: [{ $type: 'com.atproto.repo.applyWrites#delete', collection, rkey }] }
      })
      return { commit: out.commit }
    },

    async getLatestCommit (did) {
      return await xrpc<{ cid: string, rev: string }>('GET', 'com.atproto.sync.getLatestCommit', { params: { did } })
    },

    async getRepoCar (did, since) {
      const params: Record<string, string> = { did }
      if (since !== undefined) params.since = since
      return await xrpc<Uint8Array>('GET', 'com.atproto.sync.getRepo', { params })
    },

    async deactivateAccount (account) {
      await xrpc('POST', 'com.atproto.server.deactivateAccount', { host: hostOf(account), auth: bearer(account), body: {} })
    },

    async activateAccount (account) {
      await xrpc('POST', 'com.atproto.server.activateAccount', { host: hostOf(account), auth: bearer(account) })
    },

    async takedownAccount (did, applied = true) {
      await xrpc('POST', 'com.atproto.admin.updateSubjectStatus', {
        auth: adminAuth,
        body: {
          subject: { $type: 'com.atproto.admin.defs#repoRef', did },
          takedown: { applied, ref: applied ? 'atmirror-test' : undefined }
        }
      })
    },

    async rotateSigningKey (account, options = {}) {
      const running = pds
      if (running === undefined) throw new Error('rotateSigningKey needs the PDS running')
      const { ctx } = running
      const keypair = await Secp256k1Keypair.create({ exportable: true })
      // The PDS reads the key file at every write, so replacing it is the rotation.
      const { keyLocation } = await ctx.actorStore.getLocation(account.did)
      await writeFile(keyLocation, await keypair.export())
      await ctx.plcClient.updateAtprotoKey(account.did, ctx.plcRotationKey, keypair.did())
      if (options.commit === false) return { didKey: keypair.did() }
      // An empty commit, as the PDS's own rotate-keys script writes.
      const did = account.did as `did:${string}:${string}`
      const { commit, syncData } = await ctx.actorStore.transact(did, async (txn) => {
        const data = await txn.repo.processWrites([])
        return { commit: { cid: data.cid.toString(), rev: data.rev }, syncData: await txn.repo.getSyncEventData() }
      })
      await ctx.sequencer.sequenceIdentity(did)
      await ctx.sequencer.sequenceSync(did, syncData)
      return { didKey: keypair.did(), commit }
    },

    async addPds () {
      const port = await freePort()
      const base = join(dir, `pds-${hosts.length + 2}`)
      await mkdir(base, { recursive: true })
      const requests: string[] = []
      const launched = await launchPds(await envFor(port, base, join(base, 'blobs')), requests)
      const host = { url: `http://localhost:${port}`, pds: launched.pds, server: launched.server, requests }
      hosts.push(host)
      return host
    },

    async migrateAccount (account, to) {
      const from = hostOf(account)
      const fromPds = from === pdsUrl ? pds : hosts.find(h => h.url === from)?.pds
      if (fromPds === undefined) throw new Error(`migrateAccount: ${from} is not running`)
      const did = account.did
      const { token } = await xrpc<{ token: string }>('GET', 'com.atproto.server.getServiceAuth', {
        host: from,
        auth: bearer(account),
        params: { aud: to.pds.ctx.cfg.service.did, lxm: 'com.atproto.server.createAccount' }
      })
      const created = await xrpc<{ accessJwt: string, refreshJwt: string }>('POST', 'com.atproto.server.createAccount', {
        host: to.url,
        auth: `Bearer ${token}`,
        body: { did, handle: account.handle, email: account.email, password: account.password }
      })
      const moved = `Bearer ${created.accessJwt}`
      await xrpc('POST', 'com.atproto.repo.importRepo', { host: to.url, auth: moved, body: await xrpc<Uint8Array>('GET', 'com.atproto.sync.getRepo', { host: from, params: { did } }) })
      const { ctx } = fromPds
      const key = await to.pds.ctx.actorStore.keypair(did)
      // one operation, as signPlcOperation makes it: the new host may rotate, signs, and serves
      await ctx.plcClient.updateData(did, ctx.plcRotationKey, (last) => ({
        ...last,
        rotationKeys: [to.pds.ctx.plcRotationKey.did(), ...last.rotationKeys],
        verificationMethods: { ...last.verificationMethods, atproto: key.did() },
        services: { ...last.services, atproto_pds: { type: 'AtprotoPersonalDataServer', endpoint: to.url } }
      }))
      await xrpc('POST', 'com.atproto.server.activateAccount', { host: to.url, auth: moved })
      await xrpc('POST', 'com.atproto.server.deactivateAccount', { host: from, auth: bearer(account), body: {} })
      account.host = to.url
      account.accessJwt = created.accessJwt
      account.refreshJwt = created.refreshJwt
    },

    stopPds,
    startPds,

    async stopPlc () {
      const server = plcServer
      plcServer = undefined
      if (server !== undefined) await closeServer(server)
    },

    async startPlc () {
      if (plcServer === undefined) plcServer = await listenLocal(plc.app, plcPort)
    },

    async stop () {
      try {
        for (const host of hosts.splice(0)) {
          await closeServer(host.server)
          await host.pds.destroy()
        }
        await stopPds()
      } finally {
        try {
          if (plcServer !== undefined) await closeServer(plcServer)
          await plc.ctx.db.close()
        } finally {
          await rm(dir, { recursive: true, force: true })
        }
      }
    }
  }
}

async function listenLocal (app: Parameters<typeof createServer>[1], port = 0): Promise<Server> {
  const server = createServer(app)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server
}

async function closeServer (server: Server): Promise<void> {
  await new Promise<void>(resolve => {
    server.close(() => { resolve() })
    server.closeAllConnections()
  })
}

async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => { resolve() })
  })
  const { port } = server.address() as AddressInfo
  await closeServer(server)
  return port
}
