import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { CompositeHeadResolver } from '../../src/head/composite-head-resolver.ts'
import type { Head, HeadResolver } from '../../src/head/head-resolver.ts'
import { PdsUnavailableError, RepoDeactivatedError } from '../../src/errors.ts'
import { CID } from '../../src/repo/cid.ts'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
const SOME_CID = CID.parse('bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm')

// Sources are already-verified heads: the composite only compares them.
function source (name: string, rev: string | Error, delayMs = 0): HeadResolver {
  return {
    name,
    async resolveHead (did, options = {}) {
      await new Promise(resolve => setTimeout(resolve, delayMs))
      options.signal?.throwIfAborted()
      if (rev instanceof Error) throw rev
      return { did, cid: SOME_CID, rev, data: SOME_CID, commit: {} as Head['commit'], bytes: new Uint8Array(), source: name }
    }
  }
}

describe('CompositeHeadResolver', () => {
  it('keeps the highest rev among the sources that answer', async () => {
    const head = await new CompositeHeadResolver([
      source('pds', '3l3qo2vutsw2b'),
      source('peer-a', '3l3qo2vutsw2d', 5),
      source('peer-b', '3l3qo2vutsw2c'),
      source('peer-c', new Error('no peers'))
    ]).resolveHead(DID)
    assert.equal(head.rev, '3l3qo2vutsw2d')
    assert.equal(head.source, 'peer-a')
  })

  it('ties keep the first source', async () => {
    const head = await new CompositeHeadResolver([source('pds', '3l3qo2vutsw2b'), source('peer', '3l3qo2vutsw2b')]).resolveHead(DID)
    assert.equal(head.source, 'pds')
  })

  it('when every source fails, HeadUnavailableError lists each reason', async () => {
    const deactivated = new RepoDeactivatedError('com.atproto.sync.getLatestCommit: RepoDeactivated', { did: DID })
    const down = new PdsUnavailableError('timed out')
    await assert.rejects(new CompositeHeadResolver([source('pds', deactivated), source('peers', down)]).resolveHead(DID), (err: Error & { did?: string, errors?: Array<{ source: string, error: Error }> }) => {
      assert.equal(err.name, 'HeadUnavailableError')
      assert.equal(err.did, DID)
      assert.deepEqual(err.errors?.map(e => e.source), ['pds', 'peers'])
      assert.equal(err.errors?.[0]?.error, deactivated)
      return true
    })
  })

  it('with no sources, HeadUnavailableError says so', async () => {
    await assert.rejects(new CompositeHeadResolver([]).resolveHead(DID), { name: 'HeadUnavailableError', message: /no sources/ })
  })

  it("the caller's abort is rethrown, not aggregated", async () => {
    const controller = new AbortController()
    setTimeout(() => { controller.abort() }, 5)
    await assert.rejects(new CompositeHeadResolver([source('pds', '3l3qo2vutsw2b', 50)]).resolveHead(DID, { signal: controller.signal }), { name: 'AbortError' })
  })
})
