/**
 * `atmirror daemon --http`: the flag's forms, its refusals, and a daemon that serves
 * `/xrpc/_health` where its started line says. Nothing here needs the network.
 */
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { httpFlag } from '../../bin/commands/daemon.ts'

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')
const env = { ...process.env, ATMIRROR_PLC: 'http://127.0.0.1:9', ATMIRROR_DATA: '', DEBUG: '' }

describe('daemon --http', () => {
  let dir: string

  before(async () => { dir = await mkdtemp(join(tmpdir(), 'atmirror-cli-http-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  it('is off unless given, and takes PORT (loopback), HOST, HOST:PORT and [V6]:PORT', () => {
    assert.equal(httpFlag(undefined, false), false)
    assert.equal(httpFlag('off', false), false)
    assert.deepEqual(httpFlag('2585', false), { host: '127.0.0.1', port: 2585, trustProxy: false })
    assert.deepEqual(httpFlag('0.0.0.0', true), { host: '0.0.0.0', port: 2584, trustProxy: true })
    assert.deepEqual(httpFlag('127.0.0.1:0', false), { host: '127.0.0.1', port: 0, trustProxy: false })
    assert.deepEqual(httpFlag('[::1]:8080', false), { host: '::1', port: 8080, trustProxy: false })
  })

  for (const [value, message] of [
    ['a:b:c', /--http must be HOST:PORT/],
    [':80', /--http needs a host/],
    ['localhost:99999', /--http port must be an integer from 0 to 65535/]
  ] as const) {
    it(`refuses ${JSON.stringify(value)} with a usage error`, async () => {
      const run = await new Promise<{ code: number | null, stderr: string }>(resolve => {
        execFile(process.execPath, [CLI, 'daemon', '--offline', '--api', '0', '--http', value, '--data', join(dir, 'refused')], { env, timeout: 30_000 }, (err, _stdout, stderr) => {
          resolve({ code: err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null, stderr })
        })
      })
      assert.equal(run.code, 2)
      assert.match(run.stderr, message)
    })
  }

  it('--http-trust-proxy without --http is a usage error', () => {
    assert.throws(() => httpFlag(undefined, true), /--http-trust-proxy needs --http/)
  })

  it('serves /xrpc/_health at the address its started line gives', async () => {
    const child = spawn(process.execPath, [CLI, 'daemon', '--offline', '--api', '0', '--http', '127.0.0.1:0', '--json', '--data', join(dir, 'serving')], { stdio: ['ignore', 'pipe', 'pipe'], env })
    let stdout = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    try {
      const started = await new Promise<{ http: string }>((resolve, reject) => {
        child.stdout.on('data', () => {
          const line = stdout.split('\n').find(l => l.includes('"event":"started"'))
          if (line !== undefined) resolve(JSON.parse(line))
        })
        child.once('exit', (code) => { reject(new Error(`daemon exited with ${code}`)) })
      })
      assert.match(started.http, /^http:\/\/127\.0\.0\.1:\d+$/)
      const res = await fetch(`${started.http}/xrpc/_health`)
      assert.equal(res.status, 200)
      assert.equal(typeof (await res.json()).version, 'string')
      // and `atmirror status` points at it
      const status = await new Promise<string>((resolve, reject) => {
        execFile(process.execPath, [CLI, 'status', '--data', join(dir, 'serving')], { env, timeout: 30_000 }, (err, stdout) => { if (err !== null) reject(err); else resolve(stdout) })
      })
      assert.match(status, new RegExp(`^http: +${started.http.replaceAll('.', '\\.')}$`, 'm'))
    } finally {
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      await exited
    }
  })
})
