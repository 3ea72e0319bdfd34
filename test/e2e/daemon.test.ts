/**
 * Real daemons as child processes (`node bin/atmirror.ts daemon --private …`) against
 * a real PLC + PDS on 127.0.0.1, driven through the CLI and the control API.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { acquireDataDirLock, lockPath } from '../../src/mirror/lock.ts'
import { daemonInfoPath, readDaemonInfo, type DaemonInfo } from '../../src/server/daemon-info.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'

const BIN = join(import.meta.dirname, '../../bin/atmirror.ts')

interface Daemon {
  child: ChildProcess
  dir: string
  info: DaemonInfo
  token: string
  /** Every JSON event line printed so far. */
  events: Array<Record<string, any>>
  stderr: () => string
}

interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

describe('daemon', () => {
  let net: TestNetwork
  let alice: TestAccount
  const dirs: string[] = []
  const daemons: Daemon[] = []

  async function tempDir (): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-daemon-'))
    dirs.push(dir)
    return dir
  }

  function identityArgs (): string[] {
    return ['--plc', net.plcUrl, '--handle-resolver', net.pdsUrl]
  }

  async function cli (args: string[], options: { dir: string }): Promise<CliResult> {
    const child = spawn(process.execPath, [BIN, ...args, '--data', options.dir], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const [code] = await once(child, 'exit') as [number | null]
    return { code, stdout, stderr }
  }

  /** Starts a daemon and waits for its `started` event and daemon.json. */
  async function startDaemon (dir: string, extra: string[] = []): Promise<Daemon> {
    const child = spawn(process.execPath, [
      BIN, 'daemon', '--private', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '0', '--data', dir, '--json', ...identityArgs(), ...extra
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    const events: Array<Record<string, any>> = []
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    let buffered = ''
    const started = new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (chunk: Buffer) => {
        buffered += chunk.toString()
        let newline: number
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline)
          buffered = buffered.slice(newline + 1)
          const event = JSON.parse(line) as Record<string, any>
          events.push(event)
          if (event.event === 'started') resolve()
        }
      })
      child.once('exit', (code) => { reject(new Error(`daemon exited with ${code} before starting: ${stderr}`)) })
    })
    await started
    const info = await readDaemonInfo(dir)
    assert.ok(info !== undefined, 'daemon.json written')
    const token = (await readFile(join(dir, 'api-token'), 'utf8')).trim()
    const daemon = { child, dir, info, token, events, stderr: () => stderr }
    daemons.push(daemon)
    return daemon
  }

  async function stopDaemon (daemon: Daemon, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (daemon.child.exitCode !== null) return daemon.child.exitCode
    const exited = once(daemon.child, 'exit') as Promise<[number | null]>
    daemon.child.kill(signal)
    const [code] = await exited
    return code
  }

  /** Polls the daemon's events until one matches; fails after `ms`. */
  async function waitForEvent (daemon: Daemon, match: (event: Record<string, any>) => boolean, what: string, ms = 30_000): Promise<Record<string, any>> {
    const deadline = Date.now() + ms
    while (Date.now() < deadline) {
      const found = daemon.events.find(match)
      if (found !== undefined) return found
      if (daemon.child.exitCode !== null) break
      await new Promise(resolve => setTimeout(resolve, 25))
    }
    throw new Error(`no ${what} within ${ms} ms; events: ${JSON.stringify(daemon.events)}; stderr: ${daemon.stderr()}`)
  }

  async function api (daemon: Daemon, path: string, init: { method?: string, token?: string | null, body?: unknown } = {}): Promise<{ status: number, body: any }> {
    const token = init.token === undefined ? daemon.token : init.token
    const res = await fetch(daemon.info.api + path, {
      method: init.method ?? 'GET',
      headers: token === null ? {} : { authorization: `Bearer ${token}` },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: AbortSignal.timeout(30_000)
    })
    return { status: res.status, body: await res.json() }
  }

  async function blockFiles (dir: string): Promise<number> {
    let n = 0
    for (const entry of await readdir(join(dir, 'blocks'), { recursive: true, withFileTypes: true })) {
      if (entry.isFile() && entry.name.endsWith('.data')) n++
    }
    return n
  }

  before(async () => {
    net = await startTestNetwork()
    alice = await net.createAccount('alice')
    await net.writeRecords(alice, Array.from({ length: 40 }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `post ${i}`, createdAt: new Date().toISOString() }
    })))
  })

  after(async () => {
    for (const daemon of daemons) {
      if (daemon.child.exitCode === null && daemon.child.signalCode === null) daemon.child.kill('SIGKILL')
    }
    await net?.stop()
    await Promise.all(dirs.map(async dir => await rm(dir, { recursive: true, force: true })))
  })

  describe('one daemon', () => {
    let dir: string
    let daemon: Daemon

    before(async () => {
      dir = await tempDir()
      // one block file per block, so the test can count them next to the running daemon
      daemon = await startDaemon(dir, ['--blockstore', 'fs'])
    })

    it('writes daemon.json with pid, API url, peer id and loopback addresses', () => {
      assert.equal(daemon.info.pid, daemon.child.pid)
      assert.match(daemon.info.api, /^http:\/\/127\.0\.0\.1:\d+$/)
      assert.match(daemon.info.peerId ?? '', /^12D3Koo/)
      assert.equal(daemon.info.network, 'private')
      assert.ok(daemon.info.addresses.length > 0)
      for (const addr of daemon.info.addresses) assert.ok(addr.startsWith('/ip4/127.0.0.1/tcp/') && addr.endsWith(`/p2p/${daemon.info.peerId}`), addr)
    })

    it('control API without a token: 401', async () => {
      assert.equal((await api(daemon, '/v1/status', { token: null })).status, 401)
    })

    it('control API with a wrong token: 401', async () => {
      assert.equal((await api(daemon, '/v1/status', { token: '0'.repeat(64) })).status, 401)
    })

    it('control API with the right token: the node status', async () => {
      const res = await api(daemon, '/v1/status')
      assert.equal(res.status, 200)
      assert.equal(res.body.peerId, daemon.info.peerId)
      assert.equal(res.body.pid, daemon.child.pid)
    })

    it('a second daemon on the same data directory exits non-zero with DataDirLockedError', async () => {
      const second = await cli(['daemon', '--private', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '0', ...identityArgs()], { dir })
      assert.equal(second.code, 1)
      assert.match(second.stderr, /DataDirLockedError/)
      assert.match(second.stderr, new RegExp(`pid=${daemon.child.pid}`))
      assert.equal((await api(daemon, '/v1/status')).status, 200, 'the first daemon is unaffected')
    })

    it('pin add through the CLI mirrors the account via the daemon', async () => {
      const head = await net.getLatestCommit(alice.did)
      const res = await cli(['pin', 'add', alice.handle, '--json'], { dir })
      assert.equal(res.code, 0, res.stderr)
      const out = JSON.parse(res.stdout) as { did: string, sync: { rev: string, commit: string, records: number, full: boolean } }
      assert.equal(out.did, alice.did)
      assert.equal(out.sync.rev, head.rev)
      assert.equal(out.sync.commit, head.cid)
      assert.equal(out.sync.records, 40)
      assert.equal(out.sync.full, true)
      assert.ok(daemon.events.some(e => e.event === 'repo:synced' && e.did === alice.did), 'the daemon did the sync')
      assert.ok(await blockFiles(dir) > 40)
    })

    it('status shows the pinned repo with its rev, state and last sync', async () => {
      const head = await net.getLatestCommit(alice.did)
      const res = await cli(['status', '--json'], { dir })
      assert.equal(res.code, 0, res.stderr)
      const status = JSON.parse(res.stdout) as { peerId: string, addresses: string[], repos: Array<Record<string, any>> }
      assert.equal(status.peerId, daemon.info.peerId)
      assert.deepEqual(status.addresses, daemon.info.addresses)
      assert.equal(status.repos.length, 1)
      assert.equal(status.repos[0]?.did, alice.did)
      assert.equal(status.repos[0]?.handle, alice.handle)
      assert.equal(status.repos[0]?.rev, head.rev)
      assert.equal(status.repos[0]?.status, 'active')
      assert.ok(!Number.isNaN(Date.parse(status.repos[0]?.syncedAt)))
      const text = await cli(['status'], { dir })
      assert.match(text.stdout, new RegExp(`peer id: +${daemon.info.peerId}`))
      assert.match(text.stdout, new RegExp(`${alice.did} +${alice.handle.replace('.', '\\.')} +rev=${head.rev} +state=active`))
    })

    it('a sync through the API picks up new records incrementally', async () => {
      const written = await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', value: { text: 'one more', createdAt: new Date().toISOString() } }])
      const res = await api(daemon, `/v1/repos/${alice.did}/sync`, { method: 'POST' })
      assert.equal(res.status, 200)
      assert.equal(res.body.rev, written.commit.rev)
      assert.equal(res.body.changed, true)
      assert.equal(res.body.full, false)
      assert.equal(res.body.records, 41)
    })

    it('pin rm through the CLI unpins and garbage-collects the blocks', async () => {
      const res = await cli(['pin', 'rm', alice.did], { dir })
      assert.equal(res.code, 0, res.stderr)
      assert.match(res.stdout, new RegExp(`unpinned ${alice.did}`))
      assert.deepEqual((await api(daemon, '/v1/pins')).body, { pins: [] })
      assert.equal(await blockFiles(dir), 0)
    })

    it('SIGTERM stops it cleanly: exit 0, lock and daemon.json removed', async () => {
      assert.equal(await stopDaemon(daemon), 0)
      await assert.rejects(stat(lockPath(dir)), { code: 'ENOENT' })
      await assert.rejects(stat(daemonInfoPath(dir)), { code: 'ENOENT' })
      assert.ok(daemon.events.some(e => e.event === 'stopped'))
    })

    it('status without a daemon fails with a clear error', async () => {
      const res = await cli(['status'], { dir })
      assert.equal(res.code, 1)
      assert.match(res.stderr, /^error: no daemon is running on .* \(ControlApiError\)\n/)
    })
  })

  describe('without a daemon', () => {
    let dir: string

    before(async () => {
      dir = await tempDir()
    })

    it('pin add works directly on the data directory and releases it', async () => {
      const res = await cli(['pin', 'add', alice.did, '--json', ...identityArgs()], { dir })
      assert.equal(res.code, 0, res.stderr)
      const out = JSON.parse(res.stdout) as { did: string, sync: { rev: string } }
      assert.equal(out.sync.rev, (await net.getLatestCommit(alice.did)).rev)
      await assert.rejects(stat(lockPath(dir)), { code: 'ENOENT' })
      const ls = await cli(['pin', 'ls'], { dir })
      assert.match(ls.stdout, new RegExp(`${alice.did} +${alice.handle.replace('.', '\\.')} +rev=${out.sync.rev} +state=active`))
    })

    it('a direct-mode write while another process holds the lock: DataDirLockedError', async () => {
      const lock = await acquireDataDirLock(dir)
      try {
        const res = await cli(['pin', 'rm', alice.did], { dir })
        assert.equal(res.code, 1)
        assert.match(res.stderr, /DataDirLockedError/)
        assert.match(res.stderr, new RegExp(`pid=${process.pid}`))
      } finally {
        await lock.release()
      }
      assert.match((await cli(['pin', 'ls'], { dir })).stdout, new RegExp(alice.did), 'still pinned')
    })

    it('a daemon started later re-checks the pinned repo at start', async () => {
      const daemon = await startDaemon(dir)
      const synced = await waitForEvent(daemon, e => e.event === 'repo:synced' && e.did === alice.did, 'repo:synced at start')
      assert.equal(synced?.changed, false)
      assert.equal(synced?.fetched?.pds, 0)
      assert.equal(await stopDaemon(daemon), 0)
    })

    it('after a daemon is killed (SIGKILL), its stale lock and daemon.json are ignored and taken over', async () => {
      const daemon = await startDaemon(dir)
      daemon.child.kill('SIGKILL')
      await once(daemon.child, 'exit')
      assert.equal((await readDaemonInfo(dir))?.pid, daemon.child.pid, 'daemon.json left behind')
      const status = await cli(['status'], { dir })
      assert.equal(status.code, 1)
      assert.match(status.stderr, new RegExp(`no daemon is running on .*; the daemon that ran there \\(pid ${daemon.child.pid}\\) is gone`))
      assert.doesNotMatch(status.stderr, /ECONNREFUSED/)
      const ls = await cli(['pin', 'ls', '--json'], { dir })
      assert.equal(ls.code, 0, ls.stderr)
      assert.deepEqual((JSON.parse(ls.stdout) as Array<{ did: string }>).map(pin => pin.did), [alice.did])
      const next = await startDaemon(dir)
      assert.equal(next.info.pid, next.child.pid)
      assert.equal(await stopDaemon(next), 0)
    })
  })

  describe('a daemon re-checking every second', () => {
    let dir: string
    let bob: TestAccount
    let daemon: Daemon

    before(async () => {
      dir = await tempDir()
      bob = await net.createAccount('bob')
      await net.writeRecords(bob, Array.from({ length: 10 }, (_, i) => ({ collection: 'app.bsky.feed.post', value: { text: `bob ${i}`, createdAt: new Date().toISOString() } })))
      // pinned and mirrored before the daemon starts: from then on only its scheduler acts
      const pinned = await cli(['pin', 'add', bob.did, '--json', ...identityArgs()], { dir })
      assert.equal(pinned.code, 0, pinned.stderr)
      daemon = await startDaemon(dir, ['--interval', '1', '--no-follow'])
    })

    it('mirrors a record written at the PDS after start, with no command', async () => {
      // the start pass finds nothing new
      await waitForEvent(daemon, e => e.event === 'repo:synced' && e.did === bob.did, 'start pass')
      const seen = daemon.events.length
      const written = await net.writeRecords(bob, [{ collection: 'app.bsky.feed.post', value: { text: 'written while the daemon runs', createdAt: new Date().toISOString() } }])
      const synced = await waitForEvent(daemon, e => e.event === 'repo:synced' && e.did === bob.did && e.rev === written.commit.rev, 'sync of the new rev', 20_000)
      assert.ok(daemon.events.indexOf(synced) >= seen)
      assert.equal(synced.changed, true)
      assert.equal(synced.full, false)
      assert.equal(synced.records, 11)
      assert.equal(synced.commit, written.commit.cid)
      const repo = await api(daemon, `/v1/repos/${bob.did}`)
      assert.equal(repo.body.rev, written.commit.rev)
      assert.equal(repo.body.status, 'active')
      // and it keeps checking: another pass after that one, with nothing new
      const after = daemon.events.indexOf(synced)
      const next = await waitForEvent(daemon, e => e.event === 'repo:synced' && e.did === bob.did && daemon.events.indexOf(e) > after, 'a later pass', 10_000)
      assert.equal(next.changed, false)
    })

    it('SIGINT stops it cleanly: exit 0, lock and daemon.json removed, the stored state kept', async () => {
      const rev = (await api(daemon, `/v1/repos/${bob.did}`)).body.rev as string
      assert.equal(await stopDaemon(daemon, 'SIGINT'), 0)
      assert.equal(daemon.child.signalCode, null, 'exited by itself, not killed by the signal')
      await assert.rejects(stat(lockPath(dir)), { code: 'ENOENT' })
      await assert.rejects(stat(daemonInfoPath(dir)), { code: 'ENOENT' })
      assert.ok(daemon.events.some(e => e.event === 'stopped'))
      const ls = await cli(['pin', 'ls', '--json'], { dir })
      assert.equal(ls.code, 0, ls.stderr)
      const [pin] = JSON.parse(ls.stdout) as Array<{ did: string, rev: string, status: string }>
      assert.deepEqual([pin?.did, pin?.rev, pin?.status], [bob.did, rev, 'active'])
    })
  })

  describe('two private daemons', () => {
    it('the second connects to the first through --bootstrap', async () => {
      const first = await startDaemon(await tempDir())
      const second = await startDaemon(await tempDir(), ['--bootstrap', first.info.addresses[0] ?? ''])
      try {
        const a = await api(first, '/v1/status')
        const b = await api(second, '/v1/status')
        assert.equal(b.body.peers, 1)
        assert.equal(a.body.peers, 1)
        assert.notEqual(a.body.peerId, b.body.peerId)
      } finally {
        assert.equal(await stopDaemon(second), 0)
        assert.equal(await stopDaemon(first), 0)
      }
    })
  })
})
