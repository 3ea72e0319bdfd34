/**
 * What the CLI says when the arguments or the system are wrong: a message written
 * for people, a hint when the remedy is known, the usage after a usage error, one
 * JSON object with --json — and never a hang. Runs `node bin/atmirror.ts` as a child
 * process; nothing here needs the network.
 */
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { closest } from '../../bin/commands/context.ts'
import { formatBytes } from '../../bin/commands/node-options.ts'
import { formatProgress } from '../../bin/commands/progress.ts'

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')

interface Run { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string, ms: number }

/** Runs the CLI; a run that outlives `timeoutMs` is killed (and the test fails on its signal). */
async function atmirror (args: string[], init: { env?: Record<string, string>, timeoutMs?: number } = {}): Promise<Run> {
  const started = performance.now()
  return await new Promise(resolve => {
    execFile(process.execPath, [CLI, ...args], {
      env: { ...process.env, ATMIRROR_PLC: 'http://127.0.0.1:9', ATMIRROR_DATA: '', DEBUG: '', ...init.env },
      timeout: init.timeoutMs ?? 30_000,
      killSignal: 'SIGKILL'
    }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string, signal?: NodeJS.Signals }) | null
      resolve({ code: e === null ? 0 : typeof e.code === 'number' ? e.code : null, signal: e?.signal ?? null, stdout, stderr, ms: performance.now() - started })
    })
  })
}

describe('CLI errors', () => {
  let dir: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-cli-errors-'))
  })

  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  describe('flags', () => {
    it('a mistyped option: "unknown option --dat (did you mean --data?)", the usage, exit 2', async () => {
      const run = await atmirror(['status', '--dat', dir])
      assert.equal(run.code, 2)
      assert.match(run.stderr, /^error: unknown option --dat \(did you mean --data\?\)\n\nusage: atmirror status/)
      assert.doesNotMatch(run.stderr, /positional argument/)
      assert.equal(run.stdout, '')
    })

    it('a mistyped option with --json: one JSON object with the name, the message and the usage', async () => {
      const run = await atmirror(['pin', 'ls', '--jsno', '--json'])
      assert.equal(run.code, 2)
      const out = JSON.parse(run.stdout) as { ok: boolean, error: { name: string, message: string, usage: string } }
      assert.equal(out.ok, false)
      assert.equal(out.error.name, 'UsageError')
      assert.equal(out.error.message, 'unknown option --jsno (did you mean --json?)')
      assert.match(out.error.usage, /^usage:\n {2}atmirror pin add/)
      assert.equal(run.stderr, '')
    })

    it('a mistyped command: "unknown command" with a suggestion and the command list, exit 2', async () => {
      const run = await atmirror(['stauts'])
      assert.equal(run.code, 2)
      assert.match(run.stderr, /^error: unknown command "stauts" \(did you mean status\?\)\n\nusage: atmirror <command>/)
    })

    it('an option far from every known one gets no suggestion', async () => {
      const run = await atmirror(['status', '--frobnicate'])
      assert.equal(run.code, 2)
      assert.match(run.stderr, /^error: unknown option --frobnicate\n/)
    })

    it('an option without its value says so', async () => {
      const run = await atmirror(['status', '--data'])
      assert.equal(run.code, 2)
      assert.match(run.stderr, /^error: option --data needs a value\n/)
    })

    it('usage errors name no internal class', async () => {
      for (const args of [['status', '--dat', 'x'], ['pin'], ['mirror'], ['block', 'get'], ['car', 'verify']]) {
        const run = await atmirror(args)
        assert.equal(run.code, 2, args.join(' '))
        assert.doesNotMatch(run.stderr, /UsageError|CommandUsageError|Error:/, args.join(' '))
        assert.match(run.stderr, /^error: .*\n\nusage:/, args.join(' '))
      }
    })

    it('closest() suggests near names only', () => {
      assert.equal(closest('--dat', ['--data', '--plc', '--json']), '--data')
      assert.equal(closest('--plx', ['--data', '--plc', '--json']), '--plc')
      assert.equal(closest('--zzzzzz', ['--data', '--plc', '--json']), undefined)
    })
  })

  describe('system errors', () => {
    it('--data /proc/x: a DataDirError at once, not a busy loop', async () => {
      const run = await atmirror(['pin', 'ls', '--data', '/proc/atmirror-test'], { timeoutMs: 20_000 })
      assert.equal(run.signal, null, 'exited by itself')
      assert.equal(run.code, 1)
      assert.match(run.stderr, /^error: data directory not usable: this filesystem does not allow creating it; path=\/proc\/atmirror-test code=ENOENT \(DataDirError\)\n/)
      assert.match(run.stderr, /\nhint: choose a data directory on an ordinary filesystem with --data DIR/)
    })

    it('--data naming a file: the path names a file, with a hint', async () => {
      const file = join(dir, 'a-file')
      await writeFile(file, 'not a directory')
      for (const verb of [['status'], ['pin', 'ls'], ['daemon', '--offline', '--api', '0']]) {
        const run = await atmirror([...verb, '--data', file])
        assert.equal(run.code, 1, verb.join(' '))
        assert.match(run.stderr, /^error: data directory not usable: .*names a file, not a directory; path=.* code=ENOTDIR \(DataDirError\)\n/, verb.join(' '))
        assert.match(run.stderr, /\nhint: --data \(or ATMIRROR_DATA\) must name a directory/, verb.join(' '))
        assert.doesNotMatch(run.stderr, /daemon\.json/)
      }
    })

    it('--data naming a file, --json: the error as JSON with its code', async () => {
      const file = join(dir, 'another-file')
      await writeFile(file, '')
      const run = await atmirror(['pin', 'ls', '--data', file, '--json'])
      assert.equal(run.code, 1)
      const out = JSON.parse(run.stdout) as { ok: boolean, error: { name: string, code: string, hint: string } }
      assert.deepEqual([out.ok, out.error.name, out.error.code], [false, 'DataDirError', 'ENOTDIR'])
      assert.match(out.error.hint, /must name a directory/)
    })

    it('an unwritable data directory: permission denied, with a hint, nothing created', async () => {
      // root writes anywhere but sysfs; anyone else cannot write a directory of mode 0500
      let target: string
      if (process.getuid?.() === 0) {
        target = '/sys/atmirror-test'
      } else {
        const { chmod, mkdir } = await import('node:fs/promises')
        const locked = join(dir, 'locked')
        await mkdir(locked)
        await chmod(locked, 0o500)
        target = join(locked, 'data')
      }
      const run = await atmirror(['pin', 'ls', '--data', target])
      assert.equal(run.code, 1)
      assert.match(run.stderr, /^error: data directory not usable: (permission denied|operation not permitted); path=\S+ code=(EACCES|EPERM) \(DataDirError\)\n/)
      assert.match(run.stderr, /\nhint: choose a data directory you can write with --data DIR/)
      await assert.rejects(readdir(target), { code: 'ENOENT' })
    })

    describe('a listen port in use', () => {
      let server: Server
      let port: number

      before(async () => {
        server = createServer()
        await new Promise<void>(resolve => { server.listen(0, '127.0.0.1', resolve) })
        port = (server.address() as { port: number }).port
      })

      after(async () => {
        await new Promise(resolve => { server.close(resolve) })
      })

      it('the control API port: ListenError naming the address, with a hint', async () => {
        const run = await atmirror(['daemon', '--offline', '--api', String(port), '--data', join(dir, 'api-port')])
        assert.equal(run.code, 1)
        assert.match(run.stderr, new RegExp(`^error: cannot listen: address already in use; address=127\\.0\\.0\\.1:${port} \\(control API\\) code=EADDRINUSE \\(ListenError\\)\\n`))
        assert.match(run.stderr, /\nhint: another process listens there: pick a free port/)
      })

      it('the libp2p listen address: ListenError, not libp2p\'s faultTolerance advice', async () => {
        const run = await atmirror(['daemon', '--private', '--listen', `/ip4/127.0.0.1/tcp/${port}`, '--api', '0', '--data', join(dir, 'p2p-port')], { timeoutMs: 60_000 })
        assert.equal(run.code, 1)
        assert.match(run.stderr, new RegExp(`^error: cannot listen: address already in use; address=/ip4/127\\.0\\.0\\.1/tcp/${port} code=EADDRINUSE \\(ListenError\\)\\n`))
        assert.doesNotMatch(run.stderr, /faultTolerance/)
        assert.match(run.stderr, /\nhint: another process listens there/)
      })
    })

    it('--plc on a port fetch refuses (http://127.0.0.1:1): says so, and points at --plc', async () => {
      const run = await atmirror(['resolve', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', '--plc', 'http://127.0.0.1:1'])
      assert.equal(run.code, 1)
      assert.match(run.stderr, /^error: .*fetch refuses this port .*url=http:\/\/127\.0\.0\.1:1\/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa \(DidResolutionError\)\n/)
      assert.doesNotMatch(run.stderr, /bad port/)
      assert.match(run.stderr, /\nhint: check --plc/)
    })

    it('--plc on a service that is not a PLC directory (404 for everything): not "DID not found"', async () => {
      const { createServer: createHttpServer } = await import('node:http')
      const web = createHttpServer((_req, res) => { res.writeHead(404, { 'content-type': 'text/html' }).end('<pre>Cannot GET</pre>') })
      await new Promise<void>(resolve => { web.listen(0, '127.0.0.1', resolve) })
      try {
        const url = `http://127.0.0.1:${(web.address() as { port: number }).port}`
        const run = await atmirror(['resolve', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', '--plc', url])
        assert.equal(run.code, 1)
        assert.match(run.stderr, /^error: .*not a PLC directory: it answered 404 without "DID not registered".* \(DidResolutionError\)\n/)
        assert.doesNotMatch(run.stderr, /DidNotFoundError|DID not found/)
        assert.match(run.stderr, /\nhint: check --plc/)
      } finally {
        await new Promise(resolve => { web.close(resolve) })
      }
    })

    it('--plc on a closed port: connection refused, and points at --plc', async () => {
      // a port that was free a moment ago (and is not on fetch's blocked list, as 9 is)
      const probe = createServer()
      await new Promise<void>(resolve => { probe.listen(0, '127.0.0.1', resolve) })
      const closed = (probe.address() as { port: number }).port
      await new Promise(resolve => { probe.close(resolve) })
      const run = await atmirror(['resolve', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', '--plc', `http://127.0.0.1:${closed}`])
      assert.equal(run.code, 1)
      assert.match(run.stderr, /^error: .*connection refused: nothing listens there.* \(DidResolutionError\)\n/)
      assert.match(run.stderr, /\nhint: check --plc/)
    })
  })

  describe('output', () => {
    it('daemon log lines start with their time (ISO 8601, UTC)', async () => {
      const child = spawn(process.execPath, [CLI, 'daemon', '--offline', '--api', '0', '--data', join(dir, 'log-lines')], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ATMIRROR_PLC: 'http://127.0.0.1:9', DEBUG: '' }
      })
      let stdout = ''
      child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', () => { if (stdout.includes('pinned:')) resolve() })
        child.once('exit', (code) => { reject(new Error(`daemon exited with ${code}`)) })
      })
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      await exited
      const time = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z'
      assert.match(stdout, new RegExp(`^${time} atmirror \\S+ daemon running \\(pid \\d+\\)\\n`))
      assert.match(stdout, new RegExp(`\\n${time} stopped\\n$`))
    })

    it('rates are rounded: whole bytes, one decimal above', () => {
      assert.equal(formatBytes(305.3125736699533), '305 B')
      assert.equal(formatBytes(1536.123), '1.5 KiB')
      assert.match(formatProgress({ did: 'did:plc:x', phase: 'walk', blocks: 3, bytes: 916 }, 3), /\b305 B\/s$/)
    })
  })
})
