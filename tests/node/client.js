'use strict';
// node-vault, as a new user would call it, against a real vaultd.
//
//   node client.js <scenario>      scenario: mount | kv | tokens | access
//
// VAULT_ADDR and VAULT_TOKEN (a root token) come from the environment.  Each
// step's outcome is printed as one JSON object on stdout, {"steps": [...]};
// the exit status is 0 only when every step succeeded.  The checks that need
// the server's view (what was stored, whether a token still works) are made
// by tests/integration/test_node_vault.py over plain HTTP, so this script
// only reports what the client saw.  No secret value or token is printed
// except the ones the test made up or needs to check.

const nodeVault = require('node-vault');

const ROOT = process.env.VAULT_TOKEN;
const vault = nodeVault({ endpoint: process.env.VAULT_ADDR, token: ROOT });
const steps = [];

async function step(name, fn) {
    try {
        const result = await fn();
        steps.push({ name, ok: true, result: result === undefined ? null : result });
    } catch (err) {
        const status = err.response ? err.response.statusCode : null;
        const body = err.response ? err.response.body : null;
        steps.push({ name, ok: false, error: String(err.message || err), status, body });
    } finally {
        // tokenCreate and tokenRenew make the client use the token they
        // return (node-vault's "tokenSource"); every step starts as root.
        vault.token = ROOT;
    }
}

async function expectFailure(fn) {
    try {
        await fn();
    } catch (err) {
        return { status: err.response ? err.response.statusCode : null, error: String(err.message || err) };
    }
    throw new Error('the request succeeded but should have failed');
}

async function mountScenario() {
    await step('mount kv v1', () => vault.mount({
        mount_point: 'node-kv1', type: 'kv', description: 'mounted by node-vault',
    }));
    await step('mount kv v2', () => vault.mount({
        mount_point: 'node-kv2', type: 'kv', options: { version: '2' },
    }));
    await step('list mounts', async () => {
        const mounts = await vault.mounts();
        const table = mounts.data || mounts;
        return {
            'node-kv1/': table['node-kv1/'] && { type: table['node-kv1/'].type, options: table['node-kv1/'].options },
            'node-kv2/': table['node-kv2/'] && { type: table['node-kv2/'].type, options: table['node-kv2/'].options },
        };
    });
    await step('unmount kv v1', () => vault.unmount({ mount_point: 'node-kv1' }));
}

async function kvScenario() {
    // kv v1 at kv1/ and kv v2 at kv2/, mounted by the test beforehand.
    await step('kv1 write', () => vault.write('kv1/app', { password: 'node-hunter2', port: 5432 }));
    await step('kv1 read', async () => (await vault.read('kv1/app')).data);
    await step('kv1 list', async () => (await vault.list('kv1/')).data.keys);
    await step('kv2 write', async () => (await vault.write('kv2/data/app', { data: { password: 'node-v1' } })).data);
    await step('kv2 write again', async () => (await vault.write('kv2/data/app', { data: { password: 'node-v2' } })).data);
    await step('kv2 read', async () => (await vault.read('kv2/data/app')).data);
    await step('kv2 read version 1', async () => (await vault.read('kv2/data/app?version=1')).data.data);
    await step('kv1 delete', () => vault.delete('kv1/app'));
    await step('kv1 read deleted', () => expectFailure(() => vault.read('kv1/app')));
}

async function tokensScenario() {
    let child = null;
    await step('tokenCreate', async () => {
        const res = await vault.tokenCreate({
            policies: ['default'], ttl: '1h', renewable: true, display_name: 'node', meta: { app: 'node-vault' },
        });
        child = res.auth.client_token;
        return {
            client_token: child,
            accessor: res.auth.accessor,
            policies: res.auth.policies,
            lease_duration: res.auth.lease_duration,
            renewable: res.auth.renewable,
            client_switched: vault.token === child,
        };
    });
    await step('tokenLookupSelf as the child', async () => {
        vault.token = child;
        const { data } = await vault.tokenLookupSelf();
        return { display_name: data.display_name, policies: data.policies, meta: data.meta, ttl: data.ttl };
    });
    await step('tokenRenewSelf as the child', async () => {
        vault.token = child;
        const res = await vault.tokenRenewSelf({ increment: '2h' });
        return { lease_duration: res.auth.lease_duration, renewable: res.auth.renewable };
    });
    await step('tokenLookup by root', async () => (await vault.tokenLookup({ token: child })).data.display_name);
    await step('tokenRenew by root', async () => (await vault.tokenRenew({ token: child, increment: 1800 })).auth.lease_duration);
    await step('tokenRevoke by root', () => vault.tokenRevoke({ token: child }));
    await step('tokenLookup of the revoked token', () => expectFailure(() => vault.tokenLookup({ token: child })));
    let orphan = null;
    await step('tokenCreateOrphan', async () => {
        orphan = (await vault.tokenCreateOrphan({ policies: ['default'], ttl: '10m' })).auth.client_token;
        return { client_token: orphan };
    });
    await step('tokenRevokeSelf as the orphan', () => {
        vault.token = orphan;
        return vault.tokenRevokeSelf();
    });
    await step('the orphan is gone', () => {
        vault.token = orphan;
        return expectFailure(() => vault.tokenLookupSelf());
    });
}

async function accessScenario() {
    // kv v2 at kv2/ with kv2/data/app written by the test beforehand.
    const wrapped = { headers: { 'X-Vault-Wrap-TTL': '60s' } };
    await step('addPolicy', () => vault.addPolicy({
        name: 'node-app', rules: 'path "kv2/data/app" {\n  capabilities = ["read"]\n}\n',
    }));
    await step('enableAuth approle', () => vault.enableAuth({ mount_point: 'approle', type: 'approle' }));
    await step('addApproleRole', () => vault.addApproleRole({ role_name: 'node-app', policies: 'node-app' }));
    let roleId = null;
    await step('getApproleRoleId', async () => {
        roleId = (await vault.getApproleRoleId({ role_name: 'node-app' })).data.role_id;
        return { role_id: roleId };
    });
    let wrapToken = null;
    await step('getApproleRoleSecret wrapped', async () => {
        const res = await vault.getApproleRoleSecret({ role_name: 'node-app', requestOptions: wrapped });
        wrapToken = res.wrap_info.token;
        return { data: res.data, ttl: res.wrap_info.ttl, creation_path: res.wrap_info.creation_path };
    });
    let secretId = null;
    await step('unwrap the secret-id', async () => {
        secretId = (await vault.unwrap({ token: wrapToken })).data.secret_id;
        return { got_secret_id: Boolean(secretId) };
    });
    await step('unwrap it again', () => expectFailure(() => vault.unwrap({ token: wrapToken })));
    let appToken = null;
    await step('approleLogin', async () => {
        const res = await vault.approleLogin({ role_id: roleId, secret_id: secretId });
        appToken = res.auth.client_token;
        return { policies: res.auth.policies, metadata: res.auth.metadata, client_switched: vault.token === appToken };
    });
    await step('read as the app', async () => {
        vault.token = appToken;
        return (await vault.read('kv2/data/app')).data.data;
    });
    await step('write as the app', () => {
        vault.token = appToken;
        return expectFailure(() => vault.write('kv2/data/app', { data: { password: 'stolen' } }));
    });
    let wrappedRead = null;
    await step('wrapped read as the app', async () => {
        vault.token = appToken;
        const res = await vault.read('kv2/data/app', wrapped);
        wrappedRead = res.wrap_info.token;
        return { data: res.data, creation_path: res.wrap_info.creation_path };
    });
    await step('unwrap the read', async () => (await vault.unwrap({ token: wrappedRead })).data.data);
}

const scenarios = { mount: mountScenario, kv: kvScenario, tokens: tokensScenario, access: accessScenario };

async function main() {
    const scenario = scenarios[process.argv[2]];
    if (!scenario || !ROOT || !process.env.VAULT_ADDR) {
        process.stderr.write('usage: VAULT_ADDR=... VAULT_TOKEN=... node client.js mount|kv|tokens|access\n');
        return 64;
    }
    await scenario();
    process.stdout.write(`${JSON.stringify({ node: process.version, steps })}\n`);
    return steps.every((s) => s.ok) ? 0 : 1;
}

main().then((code) => { process.exitCode = code; });
