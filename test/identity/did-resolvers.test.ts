import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Resolver } from 'did-resolver'
import { isPlcDid, plcResolver, webDocumentUrl } from '../../src/identity/did-resolvers.ts'
import { normalizeHandle } from '../../src/identity/handle.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { json, startServer, type TestServer } from '../helpers/fake-servers.ts'

describe('did:web document URL', () => {
  it('hostname-level did:web', () => {
    assert.equal(webDocumentUrl('example.com'), 'https://example.com/.well-known/did.json')
  })

  it('localhost with a port over http when allowed', () => {
    assert.equal(webDocumentUrl('localhost%3A2583', true), 'http://localhost:2583/.well-known/did.json')
    assert.equal(webDocumentUrl('localhost', true), 'http://localhost/.well-known/did.json')
  })

  it('localhost refused unless allowed', () => {
    assert.deepEqual(webDocumentUrl('localhost%3A2583'), { error: 'did:web:localhost is only allowed in tests (allowHttpLocalhost)' })
  })

  it('path-based did:web is not supported', () => {
    assert.deepEqual(webDocumentUrl('example.com:user:alice'), { error: 'path-based did:web is not supported by atproto' })
  })

  it('a port is only allowed for localhost', () => {
    assert.deepEqual(webDocumentUrl('example.com%3A8080', true), { error: 'a port is only allowed for localhost' })
  })

  for (const [id, reason] of [
    ['127.0.0.1', 'not a valid hostname'],
    ['exa_mple.com', 'not a valid hostname'],
    ['com', 'not a valid hostname'],
    ['Example.com', 'not a valid hostname'],
    ['example.com.', 'not a valid hostname'],
    ['%zz', 'bad percent-encoding'],
    ['localhost%3A12%3A34', 'bad host'],
    ['localhost%3Ahttp', 'bad port'],
    ['service.arpa', '.arpa is a reserved TLD'],
    ['printer.local', '.local is a reserved TLD'],
    ['app.localhost', '.localhost is a reserved TLD'],
    ['example.onion', '.onion is a reserved TLD']
  ] as const) {
    it(`rejects ${JSON.stringify(id)}: ${reason}`, () => {
      assert.deepEqual(webDocumentUrl(id, true), { error: reason })
    })
  }
})

describe('did:plc syntax', () => {
  for (const did of ['did:plc:z72i7hdynmk6r22z27h6tvur', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa', 'did:plc:234567abcdefghijklmnopqr']) {
    it(`accepts ${did}`, () => {
      assert.equal(isPlcDid(did), true)
    })
  }

  for (const [did, why] of [
    ['did:plc:z72i7hdynmk6r22z27h6tvu', '23 characters'],
    ['did:plc:z72i7hdynmk6r22z27h6tvurr', '25 characters'],
    ['did:plc:Z72I7HDYNMK6R22Z27H6TVUR', 'uppercase'],
    ['did:plc:z72i7hdynmk6r22z27h6tvu1', 'digit 1 is not base32'],
    ['did:plc:z72i7hdynmk6r22z27h6tvu8', 'digit 8 is not base32'],
    ['did:plc:z72i7hdynmk6r22z27h6tvu0', 'digit 0 is not base32'],
    ['did:plc:z72i7hdynmk6r22z27h6tv_r', 'underscore'],
    ['did:plc:z72i7hdynmk6r22z27h6tvur ', 'trailing space'],
    ['did:plc:', 'empty identifier'],
    ['did:web:z72i7hdynmk6r22z27h6tvur', 'another method']
  ] as const) {
    it(`rejects ${JSON.stringify(did)} (${why})`, () => {
      assert.equal(isPlcDid(did), false)
    })
  }

  describe('through the resolver: refused before any request', () => {
    let plc: TestServer

    before(async () => { plc = await startServer((_req, res) => json(res, 404, {})) })
    after(async () => { await plc?.close() })

    it('plcResolver answers invalidDid with the reason', async () => {
      const result = await new Resolver({ plc: plcResolver({ plcUrl: plc.url }) }).resolve('did:plc:z72i7hdynmk6r22z27h6tvu1')
      assert.equal(result.didResolutionMetadata.error, 'invalidDid')
      assert.equal(result.didResolutionMetadata.message, 'did:plc must be 24 base32 characters')
      assert.equal(result.didDocument, null)
      assert.deepEqual(plc.requests, [])
    })

    it('AtprotoIdentityResolver throws InvalidIdentifierError', async () => {
      await assert.rejects(new AtprotoIdentityResolver({ plcUrl: plc.url }).resolve('did:plc:z72i7hdynmk6r22z27h6tvurr'), (err: Error & { identifier?: string }) => {
        assert.equal(err.name, 'InvalidIdentifierError')
        assert.equal(err.identifier, 'did:plc:z72i7hdynmk6r22z27h6tvurr')
        assert.match(err.message, /did:plc must be 24 base32 characters/)
        return true
      })
      assert.deepEqual(plc.requests, [])
    })
  })
})

describe('plcResolver: a 404 means "not found" only in a PLC directory\'s words', () => {
  const DID = 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'

  it('"DID not registered" (what a PLC directory answers): DidNotFoundError', async () => {
    const plc = await startServer((_req, res) => json(res, 404, { message: `DID not registered: ${DID}` }))
    try {
      await assert.rejects(new AtprotoIdentityResolver({ plcUrl: plc.url }).resolve(DID), { name: 'DidNotFoundError' })
    } finally {
      await plc.close()
    }
  })

  it('any other 404 (a PDS, a web server): DidResolutionError saying it is not a PLC directory', async () => {
    const other = await startServer((_req, res) => json(res, 404, { error: 'NotFound', message: 'Cannot GET' }))
    try {
      const result = await new Resolver({ plc: plcResolver({ plcUrl: other.url }) }).resolve(DID)
      assert.equal(result.didResolutionMetadata.error, 'internalError')
      await assert.rejects(new AtprotoIdentityResolver({ plcUrl: other.url }).resolve(DID), { name: 'DidResolutionError', message: /not a PLC directory/ })
    } finally {
      await other.close()
    }
  })
})

describe('normalizeHandle', () => {
  it('lowercases and drops a leading @', () => {
    assert.equal(normalizeHandle('@Alice.Example.COM'), 'alice.example.com')
  })

  it('rejects what is not a handle', () => {
    for (const bad of ['alice', 'did:plc:z72i7hdynmk6r22z27h6tvur', 'alice..com', 'alice.123', '']) {
      assert.throws(() => normalizeHandle(bad), { name: 'InvalidIdentifierError' }, bad)
    }
  })
})
