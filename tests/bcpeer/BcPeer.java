// A Bouncy Castle (1.80) DTLS 1.2 peer with RFC 9146 Connection IDs, for the interop tests (tests/bc_peer.py).
//
//   java -cp JARS:CLASSDIR BcPeer server --port P --identity ID --psk HEX --cid N [--echo]
//                                        [--peer-update cid|latest] [--timeout S] [--keylog FILE]
//   java -cp JARS:CLASSDIR BcPeer client --host H --port P --identity ID --psk HEX --cid N --send TEXT
//                                        [--count K] [--rebind-after M] [--wait-ms MS] [--timeout S] [--keylog FILE]
//
// PSK only, TLS_PSK_WITH_AES_128_CCM_8 only, DTLS 1.2 only, extended master secret required.
// --cid N: the length of the CID this side asks its peer to put in the records it sends (N random bytes; 0: an
// empty CID, "I send a CID but need none"; -1: no connection_id extension at all).
//
// Standard output, one event per line (flushed):
//   READY <port>                       server: listening on 127.0.0.1:<port>
//   LOCAL <port>                       client: its source port
//   HANDSHAKE cid_in=<hex> cid_out=<hex>   the CID we receive / the CID we send ("none": not negotiated)
//   RECV <text>                        an application record (server: received; client: the echo)
//   CLIENT <ip>:<port>                 server: the client's address at the end of the handshake
//   PEER <ip>:<port>                   server: replies now go to this address (a CID record came from it)
//   REBIND <old port> <new port>       client: continues the same session from a new socket
//   ALERT <sent|received> <level> <description>
//   CLOSED                             close_notify sent (client) or received (server)
// Errors: one line on standard error and exit status 1; --timeout (default 20 s) bounds the whole run.
//
// Server reply address: during the handshake, replies go to the source of the latest datagram. Afterwards
// (--peer-update cid, the default, RFC 9146 section 6) only a record that authenticated, carries a CID and is the
// newest seen moves the reply address; with --peer-update latest every datagram moves it.

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InterruptedIOException;
import java.io.PrintStream;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.PortUnreachableException;
import java.net.SocketAddress;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;

import org.bouncycastle.tls.AlertDescription;
import org.bouncycastle.tls.AlertLevel;
import org.bouncycastle.tls.BasicTlsPSKIdentity;
import org.bouncycastle.tls.CipherSuite;
import org.bouncycastle.tls.DTLSClientProtocol;
import org.bouncycastle.tls.DTLSRecordFlags;
import org.bouncycastle.tls.DTLSServerProtocol;
import org.bouncycastle.tls.DTLSTransport;
import org.bouncycastle.tls.DatagramTransport;
import org.bouncycastle.tls.PSKTlsClient;
import org.bouncycastle.tls.PSKTlsServer;
import org.bouncycastle.tls.ProtocolVersion;
import org.bouncycastle.tls.SecurityParameters;
import org.bouncycastle.tls.SessionParameters;
import org.bouncycastle.tls.TlsContext;
import org.bouncycastle.tls.TlsPSKIdentityManager;
import org.bouncycastle.tls.TlsSession;
import org.bouncycastle.tls.crypto.TlsSecret;
import org.bouncycastle.tls.crypto.impl.bc.BcTlsCrypto;

public final class BcPeer {
    static final PrintStream OUT = new PrintStream(new FileOutputStream(java.io.FileDescriptor.out), true,
            StandardCharsets.UTF_8);
    static final int MAX_DATAGRAM = 65507;

    /** A problem to report in one line (bad arguments, a failed step). */
    static final class PeerFailure extends Exception {
        private static final long serialVersionUID = 1L;

        PeerFailure(String message) {
            super(message);
        }
    }

    static synchronized void emit(String line) {
        OUT.println(line);
        OUT.flush();
    }

    static String hex(byte[] data) {
        if (data == null) {
            return "none";
        }
        StringBuilder sb = new StringBuilder();
        for (byte b : data) {
            sb.append(String.format("%02x", b & 0xff));
        }
        return sb.toString();
    }

    static byte[] unhex(String text, String what) throws PeerFailure {
        if (text.length() % 2 != 0 || !text.matches("[0-9a-fA-F]*")) {
            throw new PeerFailure(what + " must be an even number of hex digits");
        }
        byte[] out = new byte[text.length() / 2];
        for (int i = 0; i < out.length; i++) {
            out[i] = (byte) Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16);
        }
        return out;
    }

    // -- command line -----------------------------------------------------------------------------------------

    static final Set<String> FLAGS = Set.of("--echo");
    static final Set<String> SERVER_OPTS = Set.of("--port", "--identity", "--psk", "--cid", "--echo",
            "--peer-update", "--timeout", "--keylog");
    static final Set<String> CLIENT_OPTS = Set.of("--host", "--port", "--identity", "--psk", "--cid", "--send",
            "--count", "--rebind-after", "--wait-ms", "--timeout", "--keylog");

    static final class Options {
        final String role;
        final Map<String, String> values = new HashMap<>();

        Options(String[] args) throws PeerFailure {
            if (args.length == 0 || !(args[0].equals("server") || args[0].equals("client"))) {
                throw new PeerFailure("usage: BcPeer server|client --option value ... (see the header of BcPeer.java)");
            }
            role = args[0];
            Set<String> allowed = role.equals("server") ? SERVER_OPTS : CLIENT_OPTS;
            for (int i = 1; i < args.length; i++) {
                String name = args[i];
                if (!allowed.contains(name)) {
                    throw new PeerFailure("unknown option for " + role + ": " + name);
                }
                if (FLAGS.contains(name)) {
                    values.put(name, "");
                } else if (i + 1 >= args.length) {
                    throw new PeerFailure("option " + name + " needs a value");
                } else {
                    values.put(name, args[++i]);
                }
            }
        }

        String get(String name) throws PeerFailure {
            String v = values.get(name);
            if (v == null) {
                throw new PeerFailure("missing option " + name);
            }
            return v;
        }

        String get(String name, String dflt) {
            return values.getOrDefault(name, dflt);
        }

        boolean has(String name) {
            return values.containsKey(name);
        }

        int integer(String name, String dflt, int min, int max) throws PeerFailure {
            String text = dflt == null ? get(name) : get(name, dflt);
            int v;
            try {
                v = Integer.parseInt(text);
            } catch (NumberFormatException e) {
                throw new PeerFailure(name + " must be an integer, not " + text);
            }
            if (v < min || v > max) {
                throw new PeerFailure(name + " must be in " + min + ".." + max + ", not " + v);
            }
            return v;
        }
    }

    // -- UDP transport ----------------------------------------------------------------------------------------

    /**
     * A DatagramTransport over an unconnected DatagramSocket whose reply address and socket can change: the
     * server's follows its client (RFC 9146), the client's socket can be replaced mid-session (a new source port).
     */
    static final class UdpTransport implements DatagramTransport {
        private volatile DatagramSocket socket;
        private volatile SocketAddress replyTo;
        private volatile SocketAddress lastSource;
        private volatile boolean followEveryDatagram;
        private final boolean acceptAnySource;

        UdpTransport(DatagramSocket socket, SocketAddress replyTo, boolean followEveryDatagram) {
            this.socket = socket;
            this.replyTo = replyTo;
            this.followEveryDatagram = followEveryDatagram;
            this.acceptAnySource = replyTo == null;
        }

        void setFollowEveryDatagram(boolean follow) {
            followEveryDatagram = follow;
        }

        /** Send to the source of the latest datagram from now on; true if that changed the address. */
        boolean adoptLastSource() {
            SocketAddress src = lastSource;
            if (src == null || src.equals(replyTo)) {
                return false;
            }
            replyTo = src;
            return true;
        }

        SocketAddress replyTo() {
            return replyTo;
        }

        DatagramSocket socket() {
            return socket;
        }

        /** Continue on another socket (the client's rebind); the old one is closed. */
        void replaceSocket(DatagramSocket fresh) {
            DatagramSocket old = socket;
            socket = fresh;
            old.close();
        }

        @Override
        public int getReceiveLimit() {
            return MAX_DATAGRAM;
        }

        @Override
        public int getSendLimit() {
            return 1500 - 28; // an Ethernet MTU less the IPv4 and UDP headers
        }

        @Override
        public int receive(byte[] buf, int off, int len, int waitMillis) throws IOException {
            long deadline = System.nanoTime() + Math.max(1, waitMillis) * 1_000_000L;
            while (true) {
                long remaining = (deadline - System.nanoTime()) / 1_000_000L;
                if (remaining <= 0) {
                    return -1;
                }
                DatagramSocket sock = socket;
                DatagramPacket packet = new DatagramPacket(buf, off, len);
                try {
                    sock.setSoTimeout((int) Math.max(1, remaining));
                    sock.receive(packet);
                } catch (SocketTimeoutException e) {
                    return -1;
                } catch (PortUnreachableException e) {
                    continue; // an ICMP error for an earlier send
                }
                SocketAddress src = packet.getSocketAddress();
                if (!acceptAnySource && !src.equals(replyTo)) {
                    continue; // a client talks to its server only
                }
                lastSource = src;
                if (followEveryDatagram || replyTo == null) {
                    replyTo = src;
                }
                return packet.getLength();
            }
        }

        @Override
        public void send(byte[] buf, int off, int len) throws IOException {
            SocketAddress to = replyTo;
            if (to == null) {
                throw new IOException("no peer address yet");
            }
            socket.send(new DatagramPacket(buf, off, len, to));
        }

        @Override
        public void close() {
            socket.close();
        }
    }

    // -- TLS peers --------------------------------------------------------------------------------------------

    static final int[] SUITES = {CipherSuite.TLS_PSK_WITH_AES_128_CCM_8};

    static byte[] newConnectionId(int length, SecureRandom random) {
        if (length < 0) {
            return null;
        }
        byte[] cid = new byte[length];
        random.nextBytes(cid);
        return cid;
    }

    static void reportAlert(String direction, short level, short description) {
        emit("ALERT " + direction + " " + AlertLevel.getText(level) + " " + AlertDescription.getText(description));
    }

    static final class Server extends PSKTlsServer {
        final int cidLength;
        final int handshakeTimeoutMillis;
        volatile boolean closeNotifyReceived;

        Server(BcTlsCrypto crypto, byte[] identity, byte[] psk, int cidLength, int handshakeTimeoutMillis) {
            super(crypto, new TlsPSKIdentityManager() {
                @Override
                public byte[] getHint() {
                    return null;
                }

                @Override
                public byte[] getPSK(byte[] offered) {
                    return Arrays.equals(offered, identity) ? psk.clone() : null;
                }
            });
            this.cidLength = cidLength;
            this.handshakeTimeoutMillis = handshakeTimeoutMillis;
        }

        TlsContext context() {
            return context;
        }

        @Override
        protected ProtocolVersion[] getSupportedVersions() {
            return ProtocolVersion.DTLSv12.only();
        }

        @Override
        protected int[] getSupportedCipherSuites() {
            return SUITES.clone();
        }

        @Override
        public boolean requiresExtendedMasterSecret() {
            return true;
        }

        @Override
        public int getHandshakeTimeoutMillis() {
            return handshakeTimeoutMillis;
        }

        @Override
        protected byte[] getNewConnectionID() {
            return newConnectionId(cidLength, context.getCrypto().getSecureRandom());
        }

        @Override
        public void notifyAlertRaised(short level, short description, String message, Throwable cause) {
            reportAlert("sent", level, description);
        }

        @Override
        public void notifyAlertReceived(short level, short description) {
            reportAlert("received", level, description);
            if (description == AlertDescription.close_notify) {
                closeNotifyReceived = true;
            }
        }
    }

    static final class Client extends PSKTlsClient {
        final int cidLength;
        final int handshakeTimeoutMillis;

        Client(BcTlsCrypto crypto, byte[] identity, byte[] psk, int cidLength, int handshakeTimeoutMillis) {
            super(crypto, new BasicTlsPSKIdentity(identity, psk));
            this.cidLength = cidLength;
            this.handshakeTimeoutMillis = handshakeTimeoutMillis;
        }

        TlsContext context() {
            return context;
        }

        @Override
        protected ProtocolVersion[] getSupportedVersions() {
            return ProtocolVersion.DTLSv12.only();
        }

        @Override
        protected int[] getSupportedCipherSuites() {
            return SUITES.clone();
        }

        @Override
        public boolean requiresExtendedMasterSecret() {
            return true;
        }

        @Override
        public int getHandshakeTimeoutMillis() {
            return handshakeTimeoutMillis;
        }

        @Override
        protected byte[] getNewConnectionID() {
            return newConnectionId(cidLength, context.getCrypto().getSecureRandom());
        }

        @Override
        public void notifyAlertRaised(short level, short description, String message, Throwable cause) {
            reportAlert("sent", level, description);
        }

        @Override
        public void notifyAlertReceived(short level, short description) {
            reportAlert("received", level, description);
        }
    }

    /**
     * Prints the HANDSHAKE line. Bouncy Castle names the CIDs from the record writer's side:
     * getConnectionIDLocal() is the CID this side puts in the records it sends (the peer asked for it),
     * getConnectionIDPeer() the CID the peer puts in its records (this side asked for it).
     */
    static void reportHandshake(TlsContext context, String keylog) throws PeerFailure {
        SecurityParameters sp = context.getSecurityParametersConnection();
        if (sp == null) {
            throw new PeerFailure("no security parameters after the handshake");
        }
        if (keylog != null) {
            String line = keylogLine(context, sp);
            try (FileOutputStream out = new FileOutputStream(keylog, true)) {
                out.write(line.getBytes(StandardCharsets.US_ASCII));
            } catch (IOException e) {
                throw new PeerFailure("cannot write " + keylog + ": " + e.getMessage());
            }
        }
        emit("HANDSHAKE cid_in=" + hex(sp.getConnectionIDPeer()) + " cid_out=" + hex(sp.getConnectionIDLocal()));
    }

    /**
     * The NSS key log line for tshark (`CLIENT_RANDOM <client random> <master secret>`). The connection's
     * parameters no longer hold the master secret after the handshake; the session's do, and export a copy.
     */
    static String keylogLine(TlsContext context, SecurityParameters sp) throws PeerFailure {
        TlsSession session = context.getSession();
        SessionParameters params = session == null ? null : session.exportSessionParameters();
        TlsSecret master = params == null ? null : params.getMasterSecret();
        if (master == null) {
            throw new PeerFailure("the master secret is not available (--keylog)");
        }
        return "CLIENT_RANDOM " + hex(sp.getClientRandom()) + " " + hex(master.extract()) + "\n";
    }

    // -- roles ------------------------------------------------------------------------------------------------

    static void runServer(Options opts) throws Exception {
        int port = opts.integer("--port", null, 0, 65535);
        byte[] identity = opts.get("--identity").getBytes(StandardCharsets.UTF_8);
        byte[] psk = unhex(opts.get("--psk"), "--psk");
        int cid = opts.integer("--cid", null, -1, 255);
        boolean echo = opts.has("--echo");
        String policy = opts.get("--peer-update", "cid");
        if (!policy.equals("cid") && !policy.equals("latest")) {
            throw new PeerFailure("--peer-update must be cid or latest, not " + policy);
        }
        int timeout = opts.integer("--timeout", "20", 1, 3600);
        String keylog = opts.get("--keylog", null);

        DatagramSocket socket = new DatagramSocket(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), port));
        UdpTransport transport = new UdpTransport(socket, null, true);
        emit("READY " + socket.getLocalPort());

        BcTlsCrypto crypto = new BcTlsCrypto(new SecureRandom());
        Server server = new Server(crypto, identity, psk, cid, Math.max(1000, (timeout - 1) * 1000));
        DTLSTransport dtls;
        try {
            dtls = new DTLSServerProtocol().accept(server, transport);
        } catch (IOException e) {
            throw new PeerFailure("handshake failed: " + describe(e));
        }
        transport.setFollowEveryDatagram(policy.equals("latest"));
        reportHandshake(server.context(), keylog);
        InetSocketAddress client = (InetSocketAddress) transport.replyTo();
        emit("CLIENT " + client.getAddress().getHostAddress() + ":" + client.getPort());

        byte[] buf = new byte[dtls.getReceiveLimit()];
        final SocketAddress[] reported = {transport.replyTo()};
        while (true) {
            int n;
            try {
                n = dtls.receive(buf, 0, buf.length, 200, flags -> {
                    boolean newest = (flags & DTLSRecordFlags.IS_NEWEST) != 0;
                    boolean usesCid = (flags & DTLSRecordFlags.USES_CONNECTION_ID) != 0;
                    if (newest && usesCid) {
                        transport.adoptLastSource();
                    }
                });
            } catch (IOException e) {
                if (server.closeNotifyReceived) {
                    break;
                }
                throw new PeerFailure("receive failed: " + describe(e));
            }
            SocketAddress now = transport.replyTo();
            if (!now.equals(reported[0])) {
                reported[0] = now;
                InetSocketAddress a = (InetSocketAddress) now;
                emit("PEER " + a.getAddress().getHostAddress() + ":" + a.getPort());
            }
            if (n < 0) {
                if (server.closeNotifyReceived) {
                    break;
                }
                continue;
            }
            emit("RECV " + new String(buf, 0, n, StandardCharsets.UTF_8));
            if (echo) {
                dtls.send(buf, 0, n);
            }
        }
        emit("CLOSED");
        transport.close();
    }

    static void runClient(Options opts) throws Exception {
        String host = opts.get("--host");
        int port = opts.integer("--port", null, 1, 65535);
        byte[] identity = opts.get("--identity").getBytes(StandardCharsets.UTF_8);
        byte[] psk = unhex(opts.get("--psk"), "--psk");
        int cid = opts.integer("--cid", null, -1, 255);
        byte[] text = opts.get("--send").getBytes(StandardCharsets.UTF_8);
        int count = opts.integer("--count", "1", 0, 100000);
        int rebindAfter = opts.integer("--rebind-after", "-1", -1, 100000);
        int waitMillis = opts.integer("--wait-ms", "5000", 1, 3600000);
        int timeout = opts.integer("--timeout", "20", 1, 3600);
        String keylog = opts.get("--keylog", null);

        InetAddress address = InetAddress.getByName(host);
        InetSocketAddress server = new InetSocketAddress(address, port);
        DatagramSocket socket = new DatagramSocket(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0));
        UdpTransport transport = new UdpTransport(socket, server, false);
        emit("LOCAL " + socket.getLocalPort());

        BcTlsCrypto crypto = new BcTlsCrypto(new SecureRandom());
        Client client = new Client(crypto, identity, psk, cid, Math.max(1000, (timeout - 1) * 1000));
        DTLSTransport dtls;
        try {
            dtls = new DTLSClientProtocol().connect(client, transport);
        } catch (IOException e) {
            throw new PeerFailure("handshake failed: " + describe(e));
        }
        reportHandshake(client.context(), keylog);

        byte[] buf = new byte[dtls.getReceiveLimit()];
        for (int i = 0; i < count; i++) {
            if (i == rebindAfter) {
                int old = transport.socket().getLocalPort();
                transport.replaceSocket(new DatagramSocket(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0)));
                emit("REBIND " + old + " " + transport.socket().getLocalPort());
            }
            dtls.send(text, 0, text.length);
            int n;
            try {
                n = dtls.receive(buf, 0, buf.length, waitMillis);
            } catch (IOException e) {
                throw new PeerFailure("receive failed after message " + (i + 1) + ": " + describe(e));
            }
            if (n < 0) {
                throw new PeerFailure("no reply to message " + (i + 1) + " within " + waitMillis + " ms");
            }
            emit("RECV " + new String(buf, 0, n, StandardCharsets.UTF_8));
        }
        dtls.close(); // sends close_notify
        emit("CLOSED");
        transport.close();
    }

    static String describe(Throwable e) {
        String msg = e.getMessage();
        return e.getClass().getSimpleName() + (msg == null ? "" : ": " + msg);
    }

    public static void main(String[] args) {
        int timeout = 20;
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals("--timeout")) {
                try {
                    timeout = Math.max(1, Integer.parseInt(args[i + 1]));
                } catch (NumberFormatException e) {
                    // reported by the option parser
                }
            }
        }
        final int limit = timeout;
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(limit * 1000L);
            } catch (InterruptedException e) {
                return;
            }
            System.err.println("BcPeer: timed out after " + limit + " s");
            System.err.flush();
            Runtime.getRuntime().halt(1);
        }, "BcPeer-watchdog");
        watchdog.setDaemon(true);
        watchdog.start();
        int status = 0;
        try {
            Options opts = new Options(args);
            if (opts.role.equals("server")) {
                runServer(opts);
            } else {
                runClient(opts);
            }
        } catch (PeerFailure e) {
            System.err.println("BcPeer: " + e.getMessage());
            status = 1;
        } catch (InterruptedIOException e) {
            System.err.println("BcPeer: timed out: " + describe(e));
            status = 1;
        } catch (Exception e) {
            System.err.println("BcPeer: " + describe(e));
            status = 1;
        }
        System.err.flush();
        OUT.flush();
        Runtime.getRuntime().halt(status);
    }
}
