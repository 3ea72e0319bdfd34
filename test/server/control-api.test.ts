import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { connect } from 'node:net'
import { platform, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import type { MirrorApi } from '../../src/mirror/api.ts'
import { ControlApi, apiTokenPath } from '../../src/server/control-api.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import { daemonInfoPath, readDaemonInfo } from '../../src/server/daemon-info.ts'
import { until } from '../helpers/until.ts'

/** Whether a TCP connection to host:port is accepted (refused, unreachable or silent for 2 s: no). */
async function connects (host: string, port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const socket = connect({ host, port, timeout: 2000 })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('timeout', () => { socket.destroy(); resolve(false) })
    socket.once('error', () => { resolve(false) })
  })
}

// A real node without network; identities point at a closed port so nothing leaves
// 127.0.0.1 and any resolution fails fast.
const CLOSED = 'http://127.0.0.1:9'

describe('control API', () => {
  let dir: string
  let node: MirrorNode
  let url: string
  let token: string

  async function request (method: string, path: string, init: { token?: string | null, body?: string, headers?: Record<string, string> } = {}): Promise<{ status: number, body: any }> {
    const headers: Record<string, string> = { ...init.headers }
    const auth = init.token === undefined ? token : init.token
    if (auth !== null) headers.authorization = `Bearer ${auth}`
    const res = await fetch(url + path, { method, headers, body: init.body, signal: AbortSignal.timeout(10_000) })
    return { status: res.status, body: await res.json() }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-api-'))
    node = await createMirrorNode({ dataDir: dir, plcUrl: CLOSED, handleResolverUrl: CLOSED, network: false, api: { port: 0 }, intervalMs: 0 })
    await node.start()
    url = node.api?.url ?? ''
    token = (await readFile(apiTokenPath(dir), 'utf8')).trim()
  })

  after(async () => {
    await node?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('listens on 127.0.0.1 only', async () => {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/)
    // the socket the server holds, not just the URL it reports
    const address = node.api?.address
    assert.equal(address?.address, '127.0.0.1')
    assert.equal(address?.family, 'IPv4')
    const port = address?.port ?? 0
    assert.equal(await connects('127.0.0.1', port), true)
    // other local addresses are refused: IPv6 loopback and, on Linux, another
    // loopback address (all of 127/8 is local there). Only loopback is tried: tests
    // send nothing to any other address, not even this machine's own interfaces.
    const others = ['::1']
    if (platform() === 'linux') others.push('127.0.0.2')
    for (const host of new Set(others)) {
      assert.equal(await connects(host, port), false, `the API answered on ${host}`)
    }
  })

  it('creates a 32-byte hex token readable by the owner only', async () => {
    assert.match(token, /^[0-9a-f]{64}$/)
    assert.equal((await stat(apiTokenPath(dir))).mode & 0o777, 0o600)
  })

  it('writes daemon.json with pid and API url', async () => {
    const info = await readDaemonInfo(dir)
    assert.equal(info?.pid, process.pid)
    assert.equal(info?.api, url)
    assert.equal(info?.peerId, null)
  })

  it('answers 401 without a token', async () => {
    const res = await request('GET', '/v1/status', { token: null })
    assert.equal(res.status, 401)
    assert.equal(res.body.error, 'Unauthorized')
  })

  it('answers 401 with a wrong token', async () => {
    const res = await request('GET', '/v1/status', { token: 'f'.repeat(64) })
    assert.equal(res.status, 401)
  })

  it('answers 401 with a token of another length', async () => {
    assert.equal((await request('GET', '/v1/status', { token: token.slice(1) })).status, 401)
  })

  it('answers 401 for the token in another auth scheme', async () => {
    const res = await request('GET', '/v1/status', { token: null, headers: { authorization: `Basic ${token}` } })
    assert.equal(res.status, 401)
  })

  it('answers 401 before routing (no route discovery without the token)', async () => {
    assert.equal((await request('GET', '/nope', { token: null })).status, 401)
  })

  it('GET /v1/status with the token', async () => {
    const res = await request('GET', '/v1/status')
    assert.equal(res.status, 200)
    assert.equal(res.body.state, 'running')
    assert.equal(res.body.pid, process.pid)
    assert.equal(res.body.peerId, null)
    assert.equal(res.body.network, null)
    assert.deepEqual(res.body.repos, [])
  })

  it('GET /v1/pins lists nothing on a fresh node', async () => {
    const res = await request('GET', '/v1/pins')
    assert.deepEqual(res, { status: 200, body: { pins: [] } })
  })

  it('POST /v1/pins with invalid JSON: 400, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: '{"did":' })
    assert.equal(res.status, 400)
    assert.equal(res.body.error, 'BadRequestError')
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with an empty body: 400, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: '' })
    assert.equal(res.status, 400)
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with neither did nor handle: 400, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ repo: 'alice.test' }) })
    assert.equal(res.status, 400)
    assert.match(res.body.message, /did.*handle/)
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with both did and handle: 400, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', handle: 'a.test' }) })
    assert.equal(res.status, 400)
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with a "did" that is not a DID: 400, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ did: 'alice.test' }) })
    assert.equal(res.status, 400)
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with a malformed DID: 400 InvalidIdentifierError, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ did: 'did:plc:UPPER' }) })
    assert.equal(res.status, 400)
    assert.equal(res.body.error, 'InvalidIdentifierError')
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with a malformed handle: 400 InvalidIdentifierError, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ handle: 'not a handle' }) })
    assert.equal(res.status, 400)
    assert.equal(res.body.error, 'InvalidIdentifierError')
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins when the DID cannot be resolved: 502, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' }) })
    assert.equal(res.status, 502)
    assert.equal(res.body.error, 'DidResolutionError')
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('POST /v1/pins with a body over 16 KiB: 413, nothing pinned', async () => {
    const res = await request('POST', '/v1/pins', { body: JSON.stringify({ did: 'x'.repeat(20_000) }) })
    assert.equal(res.status, 413)
    assert.deepEqual(await node.store.pins.list(), [])
  })

  it('DELETE /v1/pins/:did of a repo not pinned: 404 NotPinnedError', async () => {
    const res = await request('DELETE', '/v1/pins/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
    assert.equal(res.status, 404)
    assert.equal(res.body.error, 'NotPinnedError')
  })

  it('GET /v1/repos/:did of a repo not pinned: 404 NotPinnedError', async () => {
    const res = await request('GET', `/v1/repos/${encodeURIComponent('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')}`)
    assert.equal(res.status, 404)
    assert.equal(res.body.error, 'NotPinnedError')
  })

  it('POST /v1/repos/:did/sync of a repo not pinned: 404', async () => {
    assert.equal((await request('POST', '/v1/repos/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/sync')).status, 404)
  })

  it('a malformed percent-encoding in the path: 400', async () => {
    assert.equal((await request('GET', '/v1/repos/%E0%A4%A')).status, 400)
  })

  it('an unknown route: 404', async () => {
    assert.equal((await request('GET', '/v1/nothing')).status, 404)
  })

  it('a wrong method: 405', async () => {
    const res = await request('PUT', '/v1/status')
    assert.equal(res.status, 405)
    assert.equal(res.body.error, 'MethodNotAllowedError')
  })

  it('the client reads daemon.json and the token', async () => {
    const found = await ControlClient.forDataDir(dir)
    assert.equal(found?.client.url, url)
    const status = await found?.client.status()
    assert.equal(status?.pid, process.pid)
  })

  it('the client throws an error answer under its own name, as the node does', async () => {
    const found = await ControlClient.forDataDir(dir)
    const local = await node.unpin('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa').then(() => undefined, (err: Error) => err)
    await assert.rejects(found?.client.unpin('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa') ?? Promise.resolve(), (err: Error & { status?: number }) => {
      assert.equal(err.name, 'NotPinnedError')
      assert.equal(err.status, 404)
      assert.equal(err.message, local?.message)
      return true
    })
  })

  it('a second node on the same data directory is refused', async () => {
    await assert.rejects(createMirrorNode({ dataDir: dir, network: false, api: false }), (err: Error) => {
      assert.equal(err.name, 'DataDirLockedError')
      assert.match(err.message, new RegExp(`pid=${process.pid}`))
      return true
    })
  })
})

describe('control client time limits', () => {
  // a real API server in front of a target whose answers the test holds back, as a
  // node's do while unpin waits for the DID's lock and GC
  let dir: string
  let api: ControlApi
  let client: ControlClient
  const held: Array<() => void> = []
  const hold = async <T>(value: T): Promise<T> => await new Promise<T>(resolve => { held.push(() => { resolve(value) }) })
  const unused = async (): Promise<never> => { throw new Error('not used') }
  const target: MirrorApi = {
    status: async () => await hold({ state: 'running', pid: process.pid, version: '', dataDir: '', startedAt: '', intervalSeconds: 0, peerId: null, network: null, addresses: [], peers: 0, metrics: null, repos: [] }),
    listPins: async () => [],
    pin: unused,
    mirror: unused,
    unpin: async (did) => await hold({ did, pinned: false as const }),
    repo: unused,
    sync: unused,
    peers: unused,
    mirrors: unused,
    getBlock: unused
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-api-client-'))
    api = new ControlApi({ target }, { dataDir: dir, port: 0 })
    await api.start()
    client = new ControlClient({ url: api.url, token: (await readFile(apiTokenPath(dir), 'utf8')).trim(), timeoutMs: 100 })
  })

  after(async () => {
    for (const release of held.splice(0)) release()
    await api?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  /** Waits until the target holds `n` answers back. */
  async function heldBack (n: number): Promise<void> {
    await until(`the target to get ${n} requests`, () => held.length >= n)
  }

  it('pin rm waits past the quick-request limit for as long as the daemon works', async () => {
    const answer = client.unpin('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
    await heldBack(1)
    // well past the 100 ms limit of quick requests
    const waited = Date.now()
    while (Date.now() - waited < 400) await new Promise(resolve => setTimeout(resolve, 50))
    held.shift()?.()
    assert.deepEqual(await answer, { did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', pinned: false })
  })

  it('pin rm ends at once when the caller aborts (Ctrl-C), with the AbortError', async () => {
    const controller = new AbortController()
    const answer = client.unpin('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', { signal: controller.signal })
    await heldBack(1)
    controller.abort(new DOMException('interrupted', 'AbortError'))
    await assert.rejects(answer, { name: 'AbortError' })
    held.shift()?.()
  })

  it('a quick request (status) still gives up after its limit with ControlApiError', async () => {
    await assert.rejects(client.status(), (err: Error) => {
      assert.equal(err.name, 'ControlApiError')
      assert.match(err.message, /no answer within 100 ms/)
      return true
    })
    held.shift()?.()
  })
})

describe('control API shutdown', () => {
  it('stop() answers 503 to running requests that heed the abort and cuts the connection of one that does not', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-api-stop-'))
    const started: string[] = []
    const unused = async (): Promise<never> => { throw new Error('not used') }
    const target: MirrorApi = {
      // heeds its signal, as the node's operations do
      unpin: async (did, options) => {
        started.push('unpin')
        return await new Promise((resolve, reject) => {
          options?.signal?.addEventListener('abort', () => { reject(options.signal?.reason) }, { once: true })
        })
      },
      // never answers, whatever happens
      status: async () => {
        started.push('status')
        return await new Promise(() => {})
      },
      listPins: unused,
      pin: unused,
      mirror: unused,
      repo: unused,
      sync: unused,
      peers: unused,
      mirrors: unused,
      getBlock: unused
    }
    const api = new ControlApi({ target }, { dataDir: dir, port: 0 })
    try {
      await api.start()
      const token = (await readFile(apiTokenPath(dir), 'utf8')).trim()
      const headers = { authorization: `Bearer ${token}` }
      const unpin = fetch(`${api.url}/v1/pins/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa`, { method: 'DELETE', headers, signal: AbortSignal.timeout(30_000) })
      const status = fetch(`${api.url}/v1/status`, { headers, signal: AbortSignal.timeout(30_000) })
      await until('both requests to be running', () => started.length === 2)
      await api.stop()
      const answered = await unpin
      assert.equal(answered.status, 503)
      assert.equal((await answered.json() as { error: string }).error, 'AbortError')
      // the connection was cut: a fetch error, not the 30 s limit
      await assert.rejects(status, (err: Error) => {
        assert.equal(err.name, 'TypeError')
        return true
      })
    } finally {
      await api.stop()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('stop() closes the API, removes daemon.json and releases the lock', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-api-'))
    try {
      const node = await createMirrorNode({ dataDir: dir, plcUrl: CLOSED, network: false, api: { port: 0 }, intervalMs: 0 })
      await node.start()
      const url = node.api?.url ?? ''
      await node.stop()
      await assert.rejects(stat(daemonInfoPath(dir)), { code: 'ENOENT' })
      await assert.rejects(fetch(url + '/v1/status', { signal: AbortSignal.timeout(2000) }))
      assert.equal(await ControlClient.forDataDir(dir), undefined)
      const again = await createMirrorNode({ dataDir: dir, network: false, api: false })
      await again.stop()
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
