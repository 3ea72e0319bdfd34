/**
 * Daemon settings from the config file and the environment (bin/commands/config.ts):
 * flag > environment > config file > default, checked on a real daemon (offline, so
 * it needs no network) through its control API, and the rules unit by unit.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { applySettings, envName, readConfig } from '../../bin/commands/config.ts'
import { daemonOptions, daemonSettings } from '../../bin/commands/daemon-options.ts'
import { readDaemonInfo } from '../../src/server/daemon-info.ts'

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')

/** Starts `atmirror daemon --offline --json`, reads its status through the API, stops it. */
async function daemonStatus (args: string[], env: Record<string, string>, dir: string): Promise<{ intervalSeconds: number, started: Record<string, unknown> }> {
  const child = spawn(process.execPath, [CLI, 'daemon', '--offline', '--json', ...args], {
    env: { ...process.env, ATMIRROR_PLC: 'http://127.0.0.1:9', DEBUG: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  let stdout = ''
  const started = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
      const line = stdout.split('\n').find(l => l.includes('"started"'))
      if (line !== undefined) resolve(JSON.parse(line))
    })
    child.once('exit', (code) => { reject(new Error(`daemon exited with ${code}: ${stderr}`)) })
  })
  try {
    const info = await readDaemonInfo(dir)
    const token = (await readFile(join(dir, 'api-token'), 'utf8')).trim()
    const res = await fetch(`${info?.api ?? ''}/v1/status`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) })
    const status = await res.json() as { intervalSeconds: number }
    return { intervalSeconds: status.intervalSeconds, started }
  } finally {
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    await exited
  }
}

describe('daemon configuration', () => {
  let dir: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-config-'))
  })

  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('<data>/config.json sets a daemon option; the environment beats it; a flag beats both', async () => {
    const data = join(dir, 'precedence')
    await rm(data, { recursive: true, force: true })
    const { mkdir } = await import('node:fs/promises')
    await mkdir(data)
    await writeFile(join(data, 'config.json'), JSON.stringify({ interval: 7, api: 0 }))
    assert.equal((await daemonStatus(['--data', data], {}, data)).intervalSeconds, 7, 'config file')
    assert.equal((await daemonStatus(['--data', data], { ATMIRROR_INTERVAL: '5' }, data)).intervalSeconds, 5, 'environment over config')
    assert.equal((await daemonStatus(['--data', data, '--interval', '3'], { ATMIRROR_INTERVAL: '5' }, data)).intervalSeconds, 3, 'flag over environment')
  })

  it('--config FILE names the file, and may set the data directory', async () => {
    const data = join(dir, 'from-config')
    const file = join(dir, 'atmirror.json')
    await writeFile(file, JSON.stringify({ data, interval: 11, api: '0' }))
    const { intervalSeconds, started } = await daemonStatus(['--config', file], { ATMIRROR_DATA: '' }, data)
    assert.equal(intervalSeconds, 11)
    assert.equal(started.dataDir, data)
    assert.equal(typeof started.time, 'string', 'events carry a timestamp')
    assert.ok(!Number.isNaN(Date.parse(started.time as string)))
  })

  it('an unknown setting in the file: ConfigError naming it, with a suggestion', async () => {
    const file = join(dir, 'typo.json')
    await writeFile(file, JSON.stringify({ intreval: 5 }))
    const child = spawn(process.execPath, [CLI, 'daemon', '--offline', '--config', file, '--data', join(dir, 'typo')], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEBUG: '' } })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const [code] = await once(child, 'exit') as [number]
    assert.equal(code, 1)
    assert.match(stderr, /^error: unknown setting "intreval" \(did you mean "interval"\?\); path=\S+typo\.json \(ConfigError\)\n/)
  })

  it('a --blob-recheck that is not a count from 0 is refused before the daemon starts', async () => {
    for (const value of ['-1', 'lots']) {
      const child = spawn(process.execPath, [CLI, 'daemon', '--offline', '--blob-recheck', value, '--data', join(dir, 'recheck')], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEBUG: '' } })
      let stderr = ''
      child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
      const [code] = await once(child, 'exit') as [number]
      assert.equal(code, 2, stderr)
      assert.match(stderr, /--blob-recheck/)
    }
  })

  it('every daemon option but --data, --config, --json, --help is a setting', () => {
    assert.deepEqual([...daemonSettings].sort(), Object.keys(daemonOptions).filter(key => !['data', 'config', 'json', 'help'].includes(key)).sort())
    assert.equal(envName('handle-resolver'), 'ATMIRROR_HANDLE_RESOLVER')
    assert.equal(envName('no-upnp'), 'ATMIRROR_NO_UPNP')
  })

  it('environment: lists split on commas and spaces, switches read as words, empty is unset', () => {
    const { values, sources } = applySettings({ listen: undefined, private: undefined, plc: undefined, interval: undefined } as Record<string, unknown>, ['listen', 'private', 'plc', 'interval'], daemonOptions, {
      ATMIRROR_LISTEN: '/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2 /ip4/127.0.0.1/tcp/3',
      ATMIRROR_PRIVATE: 'yes',
      ATMIRROR_PLC: ''
    }, { plc: 'http://127.0.0.1:7', interval: 30 })
    assert.deepEqual(values.listen, ['/ip4/127.0.0.1/tcp/1', '/ip4/127.0.0.1/tcp/2', '/ip4/127.0.0.1/tcp/3'])
    assert.equal(values.private, true)
    assert.equal(values.plc, 'http://127.0.0.1:7', 'an empty variable leaves the config value')
    assert.equal(values.interval, '30', 'numbers in the file are taken as the flag text')
    assert.deepEqual(sources, { listen: 'env', private: 'env', plc: 'config', interval: 'config' })
    assert.throws(() => applySettings({ offline: undefined }, ['offline'], daemonOptions, { ATMIRROR_OFFLINE: 'maybe' }, {}), { name: 'ConfigError', message: /ATMIRROR_OFFLINE must be a switch/ })
  })

  it('the file: wrong types and non-objects are ConfigError; a missing default file is no config', async () => {
    assert.deepEqual(await readConfig({ path: join(dir, 'absent', 'config.json'), required: false }, daemonOptions), {})
    await assert.rejects(readConfig({ path: join(dir, 'absent.json'), required: true }, daemonOptions), { name: 'ConfigError', message: /config file not found/ })
    const list = join(dir, 'list.json')
    await writeFile(list, '[1, 2]')
    await assert.rejects(readConfig({ path: list, required: true }, daemonOptions), { name: 'ConfigError', message: /not a JSON object/ })
    assert.throws(() => applySettings({ private: undefined }, ['private'], daemonOptions, {}, { private: 'yes' }), { name: 'ConfigError', message: /"private" must be true or false/ })
    assert.deepEqual(applySettings({ peer: undefined }, ['peer'], daemonOptions, {}, { peer: '/ip4/127.0.0.1/tcp/4001' }).values.peer, ['/ip4/127.0.0.1/tcp/4001'])
  })
})
