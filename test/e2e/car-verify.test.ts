/**
 * `atmirror car verify` and verifyRepoCar on repos exported by a real PDS, with the
 * signing key resolved from a real PLC directory (both on 127.0.0.1).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { CID } from 'multiformats/cid'
import { decodeCbor } from '../../src/repo/cbor.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import { verifyRepoCar } from '../../src/repo/verify.ts'
import { splitCar } from '../helpers/car-tools.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type WrittenRecord } from '../../support/network.ts'

const cli = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')

async function atmirror (args: string[], env: Record<string, string> = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise(resolve => {
    execFile(process.execPath, [cli, ...args], { env: { ...process.env, DEBUG: '', ...env } }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr })
    })
  })
}

describe('car verify on a real PDS repo', () => {
  let net: TestNetwork
  let dir: string
  let account: TestAccount
  let written: WrittenRecord[]
  let carFile: string
  let car: Uint8Array

  before(async () => {
    net = await startTestNetwork()
    dir = await mkdtemp(join(tmpdir(), 'atmirror-car-e2e-'))
    account = await net.createAccount('carverify')
    const result = await net.writeRecords(account, Array.from({ length: 250 }, (_, i) => ({
      collection: i % 5 === 0 ? 'app.bsky.feed.like' : 'app.bsky.feed.post',
      value: i % 5 === 0
        ? { subject: { uri: `at://${account.did}/app.bsky.feed.post/3jzfcijpj2z2a`, cid: 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm' }, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
        : { text: `post number ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
    })))
    written = result.records
    car = await net.getRepoCar(account.did)
    carFile = join(dir, 'repo.car')
    await writeFile(carFile, car)
  })

  after(async () => {
    await net?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('verifyRepoCar lists exactly the records the PDS wrote', async () => {
    const res = await fetch(`${net.plcUrl}/${account.did}/data`)
    const { verificationMethods } = await res.json() as { verificationMethods: { atproto: string } }
    const records: Array<{ rpath: string, cid: string }> = []
    const summary = await verifyRepoCar(car, {
      did: account.did,
      key: parseDidKey(verificationMethods.atproto),
      onRecord: (rpath, cid) => records.push({ rpath, cid: cid.toString() })
    })
    assert.equal(summary.signature, 'verified')
    assert.equal(summary.rev, (await net.getLatestCommit(account.did)).rev)
    const expected = written.map(r => ({ rpath: `${r.collection}/${r.rkey}`, cid: r.cid })).sort((a, b) => a.rpath < b.rpath ? -1 : 1)
    assert.deepEqual(records, expected)
  })

  it('records holding links outside the blessed CID set, as the PDS writes them, verify', async () => {
    // The data model blesses CIDv1 dag-cbor/raw sha-256 links, but the PDS stores
    // whatever CID a client puts in a record: a mirror must verify such repos.
    const other = await net.createAccount('carlinks')
    const links = {
      v0: 'QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR',
      dagPb: 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi',
      blessed: 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm'
    }
    const { records: [record] } = await net.writeRecords(other, [{
      collection: 'com.example.links',
      value: { v0: { $link: links.v0 }, dagPb: { $link: links.dagPb }, blessed: { $link: links.blessed }, createdAt: '2024-01-01T00:00:00.000Z' }
    }])
    const exported = await net.getRepoCar(other.did)
    const res = await fetch(`${net.plcUrl}/${other.did}/data`)
    const { verificationMethods } = await res.json() as { verificationMethods: { atproto: string } }
    const seen: string[] = []
    const summary = await verifyRepoCar(exported, { did: other.did, key: parseDidKey(verificationMethods.atproto), onRecord: (rpath, cid) => seen.push(`${rpath} ${cid.toString()}`) })
    assert.equal(summary.signature, 'verified')
    assert.deepEqual(seen, [`com.example.links/${record.rkey} ${record.cid}`])
    // the record block really holds those links, as written
    const block = splitCar(exported).blocks.find(b => b.cid.toString() === record.cid)
    assert.ok(block !== undefined)
    const value = decodeCbor<Record<string, CID>>(block.bytes)
    assert.deepEqual({ v0: value.v0.toString(), dagPb: value.dagPb.toString(), blessed: value.blessed.toString() }, links)
    assert.equal(value.v0.version, 0)
    assert.equal(value.dagPb.code, 0x70)
  })

  it('--did without --key resolves the signing key through PLC', async () => {
    const run = await atmirror(['car', 'verify', carFile, '--did', account.did, '--plc', net.plcUrl])
    assert.equal(run.code, 0, run.stderr)
    assert.match(run.stdout, /records\s+250\n/)
    assert.match(run.stdout, new RegExp(`signature\\s+verified with did:key:z\\w+ \\(resolved from ${account.did}\\)`))
  })

  it('--did takes the PLC directory from ATMIRROR_PLC', async () => {
    const run = await atmirror(['car', 'verify', carFile, '--did', account.did, '--json'], { ATMIRROR_PLC: net.plcUrl })
    assert.equal(run.code, 0, run.stderr)
    assert.equal(JSON.parse(run.stdout).signature, 'verified')
  })

  it('an unreachable PLC directory: exit 1 with the resolution error', async () => {
    const run = await atmirror(['car', 'verify', carFile, '--did', account.did, '--plc', 'http://127.0.0.1:9'])
    assert.equal(run.code, 1)
    assert.match(run.stderr, /^error: .*\(DidResolutionError\)\n/)
  })

  it('after a key rotation the old CAR no longer verifies against the DID, the new one does', async () => {
    await net.rotateSigningKey(account)
    const old = await atmirror(['car', 'verify', carFile, '--did', account.did, '--plc', net.plcUrl])
    assert.equal(old.code, 1)
    assert.match(old.stderr, /^error: .*\(CommitSignatureError\)\n/)

    const fresh = join(dir, 'rotated.car')
    await writeFile(fresh, await net.getRepoCar(account.did))
    const run = await atmirror(['car', 'verify', fresh, '--did', account.did, '--plc', net.plcUrl])
    assert.equal(run.code, 0, run.stderr)
    assert.match(run.stdout, /records\s+250\n/)
  })
})
