import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fixtureKeypair, generateRepo, type GeneratedRepo } from '../../support/generated-repo.ts'
import { dropBlock, flipByteInBlock, openRepo } from '../helpers/car-tools.ts'

const cli = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')

interface Run { code: number, stdout: string, stderr: string }

/** Runs `node bin/atmirror.ts …` as a child process, without network configuration. */
async function atmirror (...args: string[]): Promise<Run> {
  return await new Promise(resolve => {
    execFile(process.execPath, [cli, ...args], { env: { ...process.env, ATMIRROR_PLC: 'http://127.0.0.1:9', DEBUG: '' }, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

describe('atmirror car', () => {
  let dir: string
  let repo: GeneratedRepo
  let good: string
  let tampered: string
  let incomplete: string
  let dropped: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-car-'))
    repo = await generateRepo({ records: 120, seed: 5 })
    good = join(dir, 'repo.car')
    tampered = join(dir, 'tampered.car')
    await writeFile(good, repo.car)
    await writeFile(tampered, flipByteInBlock(repo.car, openRepo(repo.car).recordCids[17]))
    incomplete = join(dir, 'incomplete.car')
    dropped = openRepo(repo.car).recordCids[42]
    await writeFile(incomplete, dropBlock(repo.car, dropped))
  })

  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('verify --key: exit 0 with the summary', async () => {
    const run = await atmirror('car', 'verify', good, '--key', repo.didKey)
    assert.equal(run.code, 0, run.stderr)
    assert.match(run.stdout, /^ok: .* holds a complete repository\n/)
    assert.match(run.stdout, new RegExp(`did\\s+${repo.did}\\n`))
    assert.match(run.stdout, new RegExp(`rev\\s+${repo.rev}\\n`))
    assert.match(run.stdout, new RegExp(`commit\\s+${repo.commit}\\n`))
    assert.match(run.stdout, new RegExp(`data\\s+${repo.data} \\(MST root\\)\\n`))
    assert.match(run.stdout, /records\s+120\n/)
    assert.match(run.stdout, /blocks\s+\d+\n/)
    assert.match(run.stdout, new RegExp(`bytes\\s+\\d+ in repo blocks, ${repo.car.length} in the CAR\\n`))
    assert.match(run.stdout, new RegExp(`signature\\s+verified with ${repo.didKey}`))
    assert.equal(run.stderr, '')
  })

  it('verify without --key: exit 0 and says the signature is unchecked', async () => {
    const run = await atmirror('car', 'verify', good)
    assert.equal(run.code, 0, run.stderr)
    assert.match(run.stdout, /\(signature unchecked\)/)
    assert.match(run.stdout, /signature\s+UNCHECKED: .*not verified/)
  })

  it('verify --json: one JSON object', async () => {
    const run = await atmirror('car', 'verify', good, '--key', repo.didKey, '--did', repo.did, '--json')
    assert.equal(run.code, 0, run.stderr)
    const summary = JSON.parse(run.stdout)
    assert.equal(summary.ok, true)
    assert.equal(summary.did, repo.did)
    assert.equal(summary.rev, repo.rev)
    assert.equal(summary.commit, repo.commit)
    assert.equal(summary.data, repo.data)
    assert.equal(summary.records, 120)
    assert.equal(summary.carBytes, repo.car.length)
    assert.equal(summary.unreachableBlocks, 0)
    assert.equal(summary.signature, 'verified')
    assert.equal(summary.key, repo.didKey)
  })

  it('verify a tampered CAR: exit 1 with the error name', async () => {
    const run = await atmirror('car', 'verify', tampered, '--key', repo.didKey)
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: block bytes do not match CID; cid=\S+ .*\(CidMismatchError\)\n/)
    assert.equal(run.stdout, '')
  })

  it('verify a tampered CAR --json: the error as JSON', async () => {
    const run = await atmirror('car', 'verify', tampered, '--json')
    assert.equal(run.code, 1)
    const result = JSON.parse(run.stdout)
    assert.equal(result.ok, false)
    assert.equal(result.error.name, 'CidMismatchError')
  })

  it('verify a CAR without one of its record blocks: exit 1, MissingBlockError naming the block and the repo', async () => {
    const run = await atmirror('car', 'verify', incomplete, '--key', repo.didKey)
    assert.equal(run.code, 1)
    assert.equal(run.stdout, '')
    const rpath = repo.records.find(record => record.cid === dropped)?.rpath
    assert.ok(rpath !== undefined)
    assert.equal(run.stderr, `error: missing record; cid=${dropped} rpath=${rpath} did=${repo.did} rev=${repo.rev} (MissingBlockError)\n`)

    const json = await atmirror('car', 'verify', incomplete, '--key', repo.didKey, '--json')
    assert.equal(json.code, 1)
    const result = JSON.parse(json.stdout)
    assert.equal(result.ok, false)
    assert.equal(result.error.name, 'MissingBlockError')
  })

  it('verify with another key: exit 1, CommitSignatureError', async () => {
    const other = await fixtureKeypair('p256', 42)
    const run = await atmirror('car', 'verify', good, '--key', other.did())
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: .*\(CommitSignatureError\)\n/)
  })

  it('verify with the wrong --did: exit 1, CommitDidMismatchError', async () => {
    const run = await atmirror('car', 'verify', good, '--key', repo.didKey, '--did', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa')
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: .*\(CommitDidMismatchError\)\n/)
  })

  it('verify a malformed --key: exit 1, InvalidKeyError', async () => {
    const run = await atmirror('car', 'verify', good, '--key', 'did:key:zNope')
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: .*\(InvalidKeyError\)\n/)
  })

  it('verify a file that does not exist: exit 1', async () => {
    const run = await atmirror('car', 'verify', join(dir, 'absent.car'))
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: no such file or directory: .*absent\.car \(open\)\n/)
  })

  it('ls: one line per record in MST order', async () => {
    const run = await atmirror('car', 'ls', good)
    assert.equal(run.code, 0, run.stderr)
    const lines = run.stdout.split('\n')
    assert.equal(lines.pop(), '')
    assert.deepEqual(lines, repo.records.map(record => `${record.rpath}\t${record.cid}`))
  })

  it('ls --json: one JSON array, one element per line', async () => {
    const run = await atmirror('car', 'ls', good, '--json')
    assert.equal(run.code, 0, run.stderr)
    assert.deepEqual(JSON.parse(run.stdout), repo.records.map(record => ({ path: record.rpath, cid: record.cid })))
    assert.equal(run.stdout.split('\n').length, repo.records.length + 2, 'one line per record, then "]"')
  })

  it('ls --json of a repo without records: []', async () => {
    const empty = await generateRepo({ records: 0, seed: 6 })
    const file = join(dir, 'empty.car')
    await writeFile(file, empty.car)
    const run = await atmirror('car', 'ls', file, '--json')
    assert.equal(run.code, 0, run.stderr)
    assert.equal(run.stdout, '[]\n')
  })

  it('ls a tampered CAR: exit 1', async () => {
    const run = await atmirror('car', 'ls', tampered)
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: .*\(CidMismatchError\)\n/)
  })

  it('usage errors: exit 2', async () => {
    assert.equal((await atmirror('car')).code, 2)
    assert.equal((await atmirror('car', 'verify')).code, 2)
    assert.equal((await atmirror('car', 'frobnicate', good)).code, 2)
    assert.equal((await atmirror('car', 'verify', good, '--nope')).code, 2)
  })

  it('--help: exit 0 with usage', async () => {
    const run = await atmirror('car', '--help')
    assert.equal(run.code, 0)
    assert.match(run.stdout, /atmirror car verify FILE\.car/)
    assert.match(run.stdout, /atmirror car ls FILE\.car/)
  })
})
