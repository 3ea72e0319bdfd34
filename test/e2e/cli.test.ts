/**
 * The CLI as people use it, against a real PLC + PDS on 127.0.0.1: the same verb
 * behaves the same with and without a daemon (errors keep their name, progress
 * shows, blocks come through the daemon), ignored flags are warned about, the
 * source of a head is shown, and what is mirrored can be read back (records,
 * record get). Runs `node bin/atmirror.ts` as child processes.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { readDaemonInfo } from '../../src/server/daemon-info.ts'
import { verifyRepoCar } from '../../src/repo/verify.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type WrittenRecord } from '../../support/network.ts'

const BIN = join(import.meta.dirname, '../../bin/atmirror.ts')
/** A DID no PLC directory knows. */
const UNKNOWN_DID = 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'

interface Run { code: number | null, stdout: string, stderr: string, raw: Buffer }

describe('the CLI as people use it', () => {
  let net: TestNetwork
  let alice: TestAccount
  let bob: TestAccount
  let posts: WrittenRecord[]
  let like: WrittenRecord
  const dirs: string[] = []
  const children: ChildProcess[] = []

  async function tempDir (): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'atmirror-cli-'))
    dirs.push(dir)
    return dir
  }

  async function cli (args: string[], dir: string, env: Record<string, string> = {}): Promise<Run> {
    const child = spawn(process.execPath, [BIN, ...args, '--data', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, DEBUG: '', ATMIRROR_PLC: net.plcUrl, ATMIRROR_HANDLE_RESOLVER: net.pdsUrl, ...env }
    })
    const out: Buffer[] = []
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { out.push(chunk) })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const [code] = await once(child, 'exit') as [number | null]
    const raw = Buffer.concat(out)
    return { code, stdout: raw.toString(), stderr, raw }
  }

  async function startDaemon (dir: string): Promise<ChildProcess> {
    const child = spawn(process.execPath, [BIN, 'daemon', '--private', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '0', '--interval', '0', '--no-follow', '--data', dir, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, DEBUG: '', ATMIRROR_PLC: net.plcUrl, ATMIRROR_HANDLE_RESOLVER: net.pdsUrl }
    })
    children.push(child)
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    await new Promise<void>((resolve, reject) => {
      let buffered = ''
      child.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString()
        if (buffered.includes('"event":"started"')) resolve()
      })
      child.once('exit', (code) => { reject(new Error(`daemon exited with ${code}: ${stderr}`)) })
    })
    return child
  }

  /** Progress lines as `mirror`/`pin add --progress` print them on a pipe. */
  const PROGRESS = /^(head|download|walk|verify|commit) +\d+ blocks +\d/m

  before(async () => {
    net = await startTestNetwork()
    alice = await net.createAccount('clialice')
    bob = await net.createAccount('clibob')
    posts = (await net.writeRecords(alice, Array.from({ length: 12 }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `post ${i}`, createdAt: new Date().toISOString() }
    })))).records
    ;[like] = (await net.writeRecords(alice, [{
      collection: 'app.bsky.feed.like',
      value: { subject: { uri: posts[0]?.uri, cid: posts[0]?.cid }, createdAt: new Date().toISOString() }
    }])).records as [WrittenRecord]
    await net.writeRecords(bob, [{ collection: 'app.bsky.feed.post', value: { text: 'bob', createdAt: new Date().toISOString() } }])
  })

  after(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await net?.stop()
    await Promise.all(dirs.map(async dir => await rm(dir, { recursive: true, force: true })))
  })

  describe('without a daemon', () => {
    let dir: string

    before(async () => {
      dir = await tempDir()
    })

    it('pin ls --json on an empty data directory: []', async () => {
      const run = await cli(['pin', 'ls', '--json'], dir)
      assert.equal(run.code, 0, run.stderr)
      assert.equal(run.stdout, '[]\n')
    })

    it('mirror shows which source answered the head (text and JSON)', async () => {
      const json = await cli(['mirror', alice.did, '--json'], dir)
      assert.equal(json.code, 0, json.stderr)
      const result = JSON.parse(json.stdout) as { source: string, records: number }
      assert.equal(result.source, `pds:${net.pdsUrl}`)
      assert.equal(result.records, 13)
      const text = await cli(['mirror', alice.did], dir)
      assert.equal(text.code, 0, text.stderr)
      assert.match(text.stdout, new RegExp(`^head: +pds:${net.pdsUrl.replaceAll('.', '\\.')}$`, 'm'))
    })

    it('records lists at:// URI and CID of every record, in MST order', async () => {
      const run = await cli(['records', alice.did], dir)
      assert.equal(run.code, 0, run.stderr)
      const expected = [like, ...posts].map(r => `at://${alice.did}/${r.collection}/${r.rkey}\t${r.cid}`).sort()
      assert.deepEqual(run.stdout.trimEnd().split('\n'), expected)
    })

    it('records with a collection lists only that collection; --json --values gives the values', async () => {
      const likes = await cli(['records', alice.handle, 'app.bsky.feed.like'], dir)
      assert.equal(likes.code, 0, likes.stderr)
      assert.equal(likes.stdout, `at://${alice.did}/app.bsky.feed.like/${like.rkey}\t${like.cid}\n`)
      const json = await cli(['records', alice.did, 'app.bsky.feed.post', '--json', '--values'], dir)
      assert.equal(json.code, 0, json.stderr)
      const listed = JSON.parse(json.stdout) as Array<{ uri: string, cid: string, value: { text: string, $type: string } }>
      assert.equal(listed.length, 12)
      assert.deepEqual(listed.map(r => r.value.text).sort(), posts.map((_, i) => `post ${i}`).sort())
      assert.ok(listed.every(r => r.value.$type === 'app.bsky.feed.post'))
      const none = await cli(['records', alice.did, 'app.bsky.graph.block', '--json'], dir)
      assert.equal(none.stdout, '[]\n')
    })

    it('record get prints one record decoded to JSON (links as $link)', async () => {
      const run = await cli(['record', 'get', like.uri], dir)
      assert.equal(run.code, 0, run.stderr)
      const value = JSON.parse(run.stdout) as { subject: { uri: string, cid: string }, $type: string }
      assert.equal(value.$type, 'app.bsky.feed.like')
      assert.deepEqual(value.subject, { uri: posts[0]?.uri, cid: posts[0]?.cid })
      const json = await cli(['record', 'get', `at://${alice.handle}/${posts[3]?.collection ?? ''}/${posts[3]?.rkey ?? ''}`, '--json'], dir)
      assert.equal(json.code, 0, json.stderr)
      const out = JSON.parse(json.stdout) as { ok: boolean, uri: string, cid: string, value: { text: string } }
      assert.deepEqual([out.ok, out.uri, out.cid, out.value.text], [true, posts[3]?.uri, posts[3]?.cid, 'post 3'])
    })

    it('record get of a record the stored repo lacks: RecordNotFoundError; of a repo not pinned: NotPinnedError', async () => {
      const missing = await cli(['record', 'get', `at://${alice.did}/app.bsky.feed.post/3zzzzzzzzzzzz`, '--json'], dir)
      assert.equal(missing.code, 1)
      assert.equal((JSON.parse(missing.stdout) as { error: { name: string } }).error.name, 'RecordNotFoundError')
      const other = await cli(['records', bob.did], dir)
      assert.equal(other.code, 1)
      assert.match(other.stderr, /\(NotPinnedError\)/)
      const bad = await cli(['record', 'get', 'https://example.test/x'], dir)
      assert.equal(bad.code, 2)
      assert.match(bad.stderr, /^error: not a record URI/)
    })

    it('block get --json prints the CID, size and base64 bytes, not raw bytes', async () => {
      const raw = await cli(['block', 'get', like.cid, '--offline'], dir)
      assert.equal(raw.code, 0, raw.stderr)
      const run = await cli(['block', 'get', like.cid, '--offline', '--json'], dir)
      assert.equal(run.code, 0, run.stderr)
      const out = JSON.parse(run.stdout) as { ok: boolean, cid: string, size: number, base64: string }
      assert.deepEqual([out.ok, out.cid, out.size], [true, like.cid, raw.raw.length])
      assert.ok(Buffer.from(out.base64, 'base64').equals(raw.raw))
    })
  })

  describe('with a daemon', () => {
    let dir: string
    let plain: string

    before(async () => {
      dir = await tempDir()
      plain = await tempDir()
      await startDaemon(dir)
    })

    it('pin add: progress shows, and an ignored --plc / --handle-resolver is warned about', async () => {
      const run = await cli(['pin', 'add', alice.did, '--progress', '--json', '--plc', net.plcUrl, '--handle-resolver', net.pdsUrl], dir)
      assert.equal(run.code, 0, run.stderr)
      assert.match(run.stderr, /^warning: a daemon is running on .* ignoring --plc, --handle-resolver$/m)
      assert.match(run.stderr, PROGRESS)
      const out = JSON.parse(run.stdout) as { ok: boolean, did: string, sync: { records: number, source: string } }
      assert.deepEqual([out.ok, out.did, out.sync.records, out.sync.source], [true, alice.did, 13, `pds:${net.pdsUrl}`])
    })

    it('mirror: the daemon does it, with progress, the warning and the head source', async () => {
      await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', value: { text: 'one more', createdAt: new Date().toISOString() } }])
      const run = await cli(['mirror', alice.handle, '--progress', '--plc', net.plcUrl], dir)
      assert.equal(run.code, 0, run.stderr)
      assert.match(run.stderr, /^warning: a daemon is running on .* ignoring --plc$/m)
      assert.match(run.stderr, /asking it to mirror/)
      assert.match(run.stderr, PROGRESS)
      assert.match(run.stdout, /^sync: +incremental sync$/m)
      assert.match(run.stdout, new RegExp(`^head: +pds:${net.pdsUrl.replaceAll('.', '\\.')}$`, 'm'))
    })

    it('an error keeps its name through the daemon, as without one', async () => {
      const direct = await cli(['pin', 'add', UNKNOWN_DID, '--json'], plain)
      const daemon = await cli(['pin', 'add', UNKNOWN_DID, '--json'], dir)
      assert.equal(direct.code, 1)
      assert.equal(daemon.code, 1)
      const [a, b] = [direct, daemon].map(run => (JSON.parse(run.stdout) as { error: { name: string, message: string } }).error)
      assert.equal(a?.name, 'DidNotFoundError')
      assert.deepEqual(b, a)
      const text = await cli(['mirror', UNKNOWN_DID], dir)
      assert.match(text.stderr, /^error: .*\(DidNotFoundError\)$/m)
      assert.doesNotMatch(text.stderr, /ControlApiError/)
    })

    it('block get without --offline fetches through the daemon (a repo not pinned here, by its PDS)', async () => {
      const head = await net.getLatestCommit(bob.did)
      const run = await cli(['block', 'get', head.cid, '--did', bob.did, '--json'], dir)
      assert.equal(run.code, 0, run.stderr)
      const out = JSON.parse(run.stdout) as { cid: string, base64: string }
      const bytes = Buffer.from(out.base64, 'base64')
      const cid = CID.parse(head.cid)
      assert.ok(CID.create(1, cid.code, await sha256.digest(bytes)).equals(cid), 'the bytes hash to the CID')
      assert.doesNotMatch(run.stderr, /bitswap needs a running node/)
      const info = await readDaemonInfo(dir)
      assert.ok(info !== undefined, 'the daemon (which holds the data directory) did it')
    })

    it('records and record get read the store next to the running daemon', async () => {
      const run = await cli(['records', alice.did, 'app.bsky.feed.like'], dir)
      assert.equal(run.code, 0, run.stderr)
      assert.equal(run.stdout, `at://${alice.did}/app.bsky.feed.like/${like.rkey}\t${like.cid}\n`)
      const record = await cli(['record', 'get', posts[5]?.uri ?? '', '--json'], dir)
      assert.equal(record.code, 0, record.stderr)
      assert.equal((JSON.parse(record.stdout) as { value: { text: string } }).value.text, 'post 5')
    })

    it('export and block get --offline read the packed store through the running daemon', async () => {
      const file = join(dir, 'alice.car')
      const run = await cli(['export', alice.did, '-o', file, '--json'], dir)
      assert.equal(run.code, 0, run.stderr)
      const written = JSON.parse(run.stdout) as { did: string, rev: string }
      const summary = await verifyRepoCar(new Uint8Array(await readFile(file)), { did: alice.did })
      assert.equal(summary.rev, written.rev)
      assert.equal(summary.records, 14)
      const offline = await cli(['block', 'get', like.cid, '--offline', '--json'], dir)
      assert.equal(offline.code, 0, offline.stderr)
      assert.equal((JSON.parse(offline.stdout) as { cid: string }).cid, like.cid)
    })
  })
})
