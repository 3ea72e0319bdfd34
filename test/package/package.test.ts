/**
 * The package as a user gets it. `npm pack` (which builds dist/ through the
 * `prepack` script), then the tarball is installed into an empty project with
 * `--omit=dev`, through npm's cache or registry like any other install. The
 * installed copy then has to work on the pinned Node: as a CLI (`--help`,
 * `car verify` on a fixture CAR), as a library (a script imports
 * `createMirrorNode` and runs a private node without the API), and as types (a
 * consumer .ts file type-checks against the shipped .d.ts with the project's tsc).
 *
 * Takes ~1 min on a 2-core machine with a warm npm cache, most of it in
 * `npm install` (the runtime dependency tree) and the build; the suite prints
 * each step's time as a diagnostic.
 */
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateRepo, type GeneratedRepo } from '../../support/generated-repo.ts'
import { packAndInstall, root, run, type InstalledPackage } from '../../support/package-install.ts'

const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'))

describe('the packed package, installed with --omit=dev', () => {
  let dir: string
  let installed: InstalledPackage
  let app: string
  let repo: GeneratedRepo

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-package-'))
    repo = await generateRepo({ records: 40, seed: 9 })
    await writeFile(join(dir, 'repo.car'), repo.car)
    installed = await packAndInstall(dir)
    app = installed.app
    process.stderr.write(`# npm pack (build included): ${installed.seconds.pack.toFixed(1)} s, npm install --omit=dev: ${installed.seconds.install.toFixed(1)} s\n`)
  })

  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('ships the build, the launcher and the docs, and no sources, tests or CI files', () => {
    for (const path of installed.files) {
      assert.match(path, /^(dist\/|docs\/|bin\/atmirror\.js$|package\.json$|README\.md$|LICENSE)/, `unexpected file in the package: ${path}`)
      assert.doesNotMatch(path, /(?<!\.d)\.ts$/, `TypeScript source in the package: ${path}`)
    }
    for (const path of ['bin/atmirror.js', 'dist/bin/atmirror.js', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/package.json']) {
      assert.ok(installed.files.includes(path), `missing from the package: ${path}`)
    }
  })

  it('has no install script and brings in no devDependency', async () => {
    const manifest = JSON.parse(await readFile(join(app, 'node_modules', 'atmirror', 'package.json'), 'utf8'))
    for (const script of ['preinstall', 'install', 'postinstall', 'prepare']) {
      assert.equal(manifest.scripts?.[script], undefined, `package.json has a ${script} script`)
    }
    // a devDependency may be in the tree only because some runtime dependency needs
    // it too (@types/node is a dependency of several @types packages); the lockfile
    // npm wrote lists every installed package with what it depends on
    const lock = JSON.parse(await readFile(join(app, 'package-lock.json'), 'utf8'))
    const installedPackages = new Map<string, Record<string, Record<string, string> | undefined>>(Object.entries(lock.packages))
    const wanted = new Set<string>()
    for (const [path, dep] of installedPackages) {
      if (path === '' || path === 'node_modules/atmirror') continue
      for (const field of ['dependencies', 'optionalDependencies', 'peerDependencies']) Object.keys(dep[field] ?? {}).forEach(name => wanted.add(name))
    }
    assert.ok(installedPackages.has('node_modules/atmirror'))
    for (const dev of Object.keys(pkg.devDependencies).filter(name => !wanted.has(name))) {
      assert.equal(installedPackages.has(`node_modules/${dev}`), false, `${dev} was installed`)
    }
  })

  it('`atmirror --help` and `--version` run on the pinned Node', async () => {
    const help = await run(installed.bin, ['--help'], { cwd: app, env: installed.env })
    assert.equal(help.code, 0, help.stderr)
    assert.match(help.stdout, /^usage: atmirror <command> \[options\]\n/)
    assert.equal(help.stderr, '')
    const version = await run(installed.bin, ['--version'], { cwd: app, env: installed.env })
    assert.equal(version.code, 0, version.stderr)
    assert.equal(version.stdout, `${pkg.version}\n`)
  })

  it('on Node < 22, the installed `atmirror` prints one line naming both versions and exits 2', async () => {
    const old = await oldNode()
    for (const args of [['--help'], ['status'], []]) {
      const result = await run(old.path, [installed.bin, ...args], { cwd: app, env: installed.env })
      assert.equal(result.code, 2, result.stderr)
      assert.equal(result.stderr, `atmirror needs Node >= 22 (found ${old.version})\n`)
      assert.equal(result.stdout, '')
    }
  })

  it('`atmirror car verify` checks a fixture CAR', async () => {
    const verify = await run(installed.bin, ['car', 'verify', join(dir, 'repo.car'), '--key', repo.didKey], { cwd: app, env: installed.env })
    assert.equal(verify.code, 0, verify.stderr)
    assert.match(verify.stdout, /^ok: .* holds a complete repository\n/)
    assert.match(verify.stdout, new RegExp(`did\\s+${repo.did}\\n`))
    assert.match(verify.stdout, /records\s+40\n/)
  })

  it("a script imports createMirrorNode from 'atmirror' and runs a private node without the API", async () => {
    const script = join(app, 'node.js')
    await writeFile(script, `
      import { createMirrorNode, VERSION } from 'atmirror'
      const node = await createMirrorNode({
        dataDir: ${JSON.stringify(join(dir, 'data'))},
        network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'] },
        api: false
      })
      await node.start()
      const status = await node.status()
      await node.stop()
      console.log(JSON.stringify({ version: VERSION, state: status.state, network: status.network, peerId: status.peerId, addresses: status.addresses, after: node.state }))
    `)
    const result = await run(installed.node, [script], { cwd: app, env: installed.env, timeout: 60_000 })
    assert.equal(result.code, 0, result.stderr)
    const status = JSON.parse(result.stdout)
    assert.equal(status.version, pkg.version)
    assert.equal(status.state, 'running')
    assert.equal(status.network, 'private')
    assert.match(status.peerId, /^12D3KooW/)
    assert.ok(status.addresses.length > 0, 'no listen address')
    for (const address of status.addresses) assert.match(address, /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)
    assert.equal(status.after, 'stopped')
  })

  it('a consumer .ts type-checks against the shipped .d.ts', async () => {
    // the expect-error lines must NOT type-check: if the package's types were
    // missing or any, tsc would report those directives as unused
    await writeFile(join(app, 'consumer.ts'), `
      import { createMirrorNode, verifyRepoCar, AtmirrorError, type MirrorNode, type MirrorNodeInit, type NodeStatus } from 'atmirror'

      const init: MirrorNodeInit = { dataDir: './mirror', network: { mode: 'private' }, api: false }
      const node: MirrorNode = await createMirrorNode(init)
      node.events.addEventListener('repo:synced', (evt) => { const rev: string = evt.detail.rev; console.log(rev) })
      const status: NodeStatus = await node.status()
      const peers: number = status.peers
      const summary = await verifyRepoCar(new Uint8Array(), { did: 'did:plc:x' })
      const records: number = summary.records
      console.log(peers, records, new AtmirrorError('x') instanceof Error)

      // @ts-expect-error dataDir is required
      await createMirrorNode({ api: false })
      // @ts-expect-error the network mode is 'public' or 'private'
      await createMirrorNode({ dataDir: '.', network: { mode: 'mesh' } })
      // @ts-expect-error pin takes a DID or handle
      await node.pin(42)
    `)
    await writeFile(join(app, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'es2023',
        module: 'nodenext',
        moduleResolution: 'nodenext',
        strict: true,
        noEmit: true,
        // as most projects (and tsc --init) have it; the expect-error lines still
        // fail the check if atmirror's own declarations resolve to any
        skipLibCheck: true,
        types: ['node'],
        // a Node project has @types/node; this one borrows the repo's
        typeRoots: [join(root, 'node_modules', '@types')]
      },
      files: ['consumer.ts']
    }))
    const tsc = await run(installed.node, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(app, 'tsconfig.json')], { cwd: app, env: installed.env })
    assert.equal(tsc.code, 0, tsc.stdout + tsc.stderr)
  })
})

/**
 * A Node older than 22 on this machine: the system's (this project's machines run
 * npm on the system Node 20; the project pins its own Node 24 for everything else).
 */
async function oldNode (): Promise<{ path: string, version: string }> {
  const candidates = new Set([...(process.env.PATH ?? '').split(':').filter(Boolean).map(dir => join(dir, 'node')), '/usr/bin/node', '/usr/local/bin/node'])
  const seen: string[] = []
  for (const path of candidates) {
    const result = await run(path, ['--version'], { cwd: root, env: {} }).catch(() => undefined)
    const version = result?.code === 0 ? result.stdout.trim() : undefined
    if (version === undefined) continue
    seen.push(`${path} ${version}`)
    if (Number(version.slice(1).split('.')[0]) < 22) return { path, version }
  }
  assert.fail(`no Node older than 22 found to test the old-Node answer (found: ${seen.join(', ') || 'none'})`)
}
