// A real OpenID Connect provider (the npm package `oidc-provider`) for airlock's identity tests.
//
//   node provider.mjs --dir DIR --key NAME [--port PORT]
//
// Serves HTTPS on 127.0.0.1 with DIR/tls.pem and DIR/tls.key (the test makes them with its own
// CA). Signs with the RSA key DIR/NAME.jwk, created on first use, and writes its public half to
// DIR/NAME.pub.pem (the alg-confusion test uses it as an HMAC secret). Restarting with another
// NAME on the same port is a key rotation. Prints `READY <issuer>` once it listens.
//
// Clients (client_credentials, secret = id + "-secret"), all issuing JWT access tokens (RFC 9068)
// whose audience is the requested resource indicator, with CI-style claims:
//   ci      a normal token
//   expired a token whose exp is two minutes before its iat
//   future  a token not valid before an hour from now
//   bulky   a normal token padded with a `padding` claim to about 12 KiB (under the 16 KiB
//           verifier limit, over the 10000 bytes of a startup packet)
//   oversized  the same padded past 64 KiB (over PostgreSQL's cap for a password message)
// and `cli`, a public device-flow client (RFC 8628) whose ID token names the reviewer.
// POST /test/approve?user_code=…&account=… completes a pending device authorization as if the
// account had logged in and consented in a browser.
//
// With --console-redirect URL it also registers `console`, a public authorization-code client
// (PKCE required, as oidc-provider does for public clients) redirecting to URL, and turns on
// the provider's own login and consent pages (any login name, any password), which the console
// tests drive in a real browser.

import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';
import path from 'node:path';

import Provider from 'oidc-provider';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i === -1) {
    if (fallback === undefined) throw new Error(`missing --${name}`);
    return fallback;
  }
  return process.argv[i + 1];
}

const dir = arg('dir');
const keyName = arg('key');
const port = Number(arg('port', '0'));
const consoleRedirect = arg('console-redirect', '');

const keyFile = path.join(dir, `${keyName}.jwk`);
let jwk;
if (fs.existsSync(keyFile)) {
  jwk = JSON.parse(fs.readFileSync(keyFile, 'utf8'));
} else {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  jwk = { ...privateKey.export({ format: 'jwk' }), kid: `${keyName}-${crypto.randomUUID()}`, use: 'sig', alg: 'RS256' };
  fs.writeFileSync(keyFile, JSON.stringify(jwk), { mode: 0o600 });
}
const publicPem = crypto.createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
fs.writeFileSync(path.join(dir, `${keyName}.pub.pem`), publicPem);

const server = https.createServer({
  cert: fs.readFileSync(path.join(dir, 'tls.pem')),
  key: fs.readFileSync(path.join(dir, 'tls.key')),
});
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;

const ciClient = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_post',
});

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [
    ciClient('ci'),
    ciClient('bulky'),
    ciClient('oversized'),
    ciClient('expired'),
    ciClient('future'),
    {
      client_id: 'cli',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'none',
    },
    ...(consoleRedirect ? [{
      client_id: 'console',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [consoleRedirect],
      token_endpoint_auth_method: 'none',
    }] : []),
  ],
  cookies: { keys: ['airlock-test-cookie-key'] },
  // Put scope claims (groups) into the ID token itself, as reviewers' tokens need them.
  conformIdTokenClaims: false,
  ttl: {
    AccessToken: 3600, ClientCredentials: 600, DeviceCode: 600, Grant: 3600, IdToken: 3600,
  },
  claims: { openid: ['sub'], groups: ['groups'], profile: ['name'] },
  scopes: ['openid', 'groups', 'profile', 'api'],
  findAccount: async (_ctx, id) => ({
    accountId: id,
    // `viewer…` accounts are in no approver group of the console test's write rule, and
    // `outsider…` accounts in no approver group at all (the console's authorization tests).
    claims: async () => ({
      sub: id,
      name: id,
      groups: (id.startsWith('viewer') && ['viewers'])
        || (id.startsWith('outsider') && ['contractors'])
        || ['dba', 'reviewers'],
    }),
  }),
  features: {
    devInteractions: { enabled: Boolean(consoleRedirect) },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://airlock.test',
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        audience: resource,
        scope: 'api',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 600,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (_ctx, token) => (token.kind === 'ClientCredentials'
    ? {
      groups: ['agents', 'ci'],
      repository: 'acme/app',
      ref: 'refs/heads/main',
      workflow: 'deploy',
      run_attempt: 1,
      ...(token.clientId === 'bulky' ? { padding: 'p'.repeat(8800) } : {}),
      ...(token.clientId === 'oversized' ? { padding: 'p'.repeat(50000) } : {}),
    }
    : undefined),
  formats: {
    customizers: {
      jwt: (_ctx, token, jwt) => {
        const now = Math.floor(Date.now() / 1000);
        if (token.clientId === 'expired') {
          jwt.payload.iat = now - 600;
          jwt.payload.exp = now - 120;
        } else if (token.clientId === 'future') {
          jwt.payload.nbf = now + 3600;
        }
      },
    },
  },
});

provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/approve' || ctx.method !== 'POST') return next();
  const userCode = String(ctx.query.user_code || '').toUpperCase().replace(/\W/g, '');
  const account = String(ctx.query.account || 'alice');
  const code = await provider.DeviceCode.findByUserCode(userCode, { ignoreExpiration: true });
  if (!code) {
    ctx.status = 404;
    ctx.body = 'unknown user code';
    return undefined;
  }
  const grant = new provider.Grant({ accountId: account, clientId: code.clientId });
  grant.addOIDCScope('openid groups profile');
  const grantId = await grant.save();
  Object.assign(code, {
    accountId: account,
    authTime: Math.floor(Date.now() / 1000),
    grantId,
    scope: 'openid groups profile',
  });
  await code.save();
  ctx.status = 204;
  return undefined;
});

server.on('request', provider.callback());
process.stdout.write(`READY ${issuer}\n`);
// The test reads one line and closes the pipe: anything printed later (the login pages log)
// must go to stderr, the log file, instead of killing the provider with EPIPE.
console.log = console.error;
console.info = console.error;
process.stdout.on('error', () => {});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
