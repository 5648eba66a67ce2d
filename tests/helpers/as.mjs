// A real OAuth 2.0 authorization server for the gateway's tests: node-oidc-provider, with
// opaque access tokens from the client-credentials grant, token introspection (RFC 7662),
// revocation (RFC 7009) and DPoP (RFC 9449).
//
//   node as.mjs      starts on a free loopback port and prints its issuer URL
//
// Clients:
//   gateway / gateway-secret   introspects tokens (client_secret_basic)
//   svc / svc-secret           gets tokens with client_credentials, scopes orders.read orders.write
import net from 'node:net';
import Provider from 'oidc-provider';

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'gateway',
      client_secret: 'gateway-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'svc',
      client_secret: 'svc-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'orders.read orders.write',
    },
  ],
  scopes: ['orders.read', 'orders.write'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: 600 },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  console.log(issuer);
});
