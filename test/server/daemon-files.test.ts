/**
 * The files the daemon and the CLI share in a data directory, damaged: an empty or
 * too-short `api-token`, a malformed `daemon.json`.
 */
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { after, before, describe, it } from 'node:test'
import { createCommandContext } from '../../bin/commands/context.ts'
import { command as status } from '../../bin/commands/status.ts'
import { acquireDataDirLock } from '../../src/mirror/lock.ts'
import type { MirrorApi } from '../../src/mirror/api.ts'
import { ControlApi, apiTokenPath } from '../../src/server/control-api.ts'
import { daemonInfoPath, findRunningDaemon } from '../../src/server/daemon-info.ts'

/** Never called: these tests only start and stop the API. */
const target = {} as unknown as MirrorApi

async function startApi (dir: string): Promise<string> {
  const api = new ControlApi({ target }, { dataDir: dir, port: 0 })
  await api.start()
  await api.stop()
  return (await readFile(apiTokenPath(dir), 'utf8')).trim()
}

async function runStatus (dir: string): Promise<{ code: number, stdout: string, stderr: string }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  let out = ''
  let err = ''
  stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  stderr.on('data', (chunk: Buffer) => { err += chunk.toString() })
  const ctx = createCommandContext({ stdout, stderr, env: {}, signal: AbortSignal.timeout(10_000) })
  const code = await status.run(['--data', dir], ctx)
  return { code, stdout: out, stderr: err }
}

describe('api-token file', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'atmirror-token-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  it('replaces an empty token file instead of failing with EEXIST', async () => {
    await writeFile(apiTokenPath(dir), '', { mode: 0o600 })
    const token = await startApi(dir)
    assert.match(token, /^[0-9a-f]{64}$/)
    assert.equal((await stat(apiTokenPath(dir))).mode & 0o777, 0o600)
  })

  it('replaces a token too short to be a secret', async () => {
    await writeFile(apiTokenPath(dir), 'abc\n', { mode: 0o600 })
    const token = await startApi(dir)
    assert.match(token, /^[0-9a-f]{64}$/)
  })

  it('keeps a good token across starts', async () => {
    const first = await startApi(dir)
    assert.equal(await startApi(dir), first)
  })
})

describe('malformed daemon.json', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'atmirror-daemonjson-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  const cases: Array<[string, string]> = [
    ['null', 'null'],
    ['not JSON', '{"pid": 1, "api": '],
    ['an api that is not a URL', JSON.stringify({ pid: process.pid, api: 'not a url' })],
    ['a pid that is not a number', JSON.stringify({ pid: 'x', api: 'http://127.0.0.1:1' })]
  ]

  for (const [name, text] of cases) {
    it(`${name}: status names the file while the directory is held`, async () => {
      const lock = await acquireDataDirLock(dir)
      try {
        await writeFile(daemonInfoPath(dir), text)
        await assert.rejects(findRunningDaemon(dir), { name: 'DaemonInfoError' })
        const run = await runStatus(dir)
        assert.equal(run.code, 1)
        assert.match(run.stderr, /^error: daemon\.json is malformed: .+; path=.* \(DaemonInfoError\)\n/)
        assert.doesNotMatch(run.stderr, /TypeError/)
      } finally {
        await lock.release()
      }
    })
  }

  it('is ignored when no process holds the directory', async () => {
    await writeFile(daemonInfoPath(dir), 'null')
    assert.equal(await findRunningDaemon(dir), undefined)
    const run = await runStatus(dir)
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: no daemon is running on .* \(ControlApiError\)\n/)
  })
})
