// pgjdbc through tierwarden (compiled with javac and run by tests/compat.rs).
//
// Connects as app_runtime to the production-tier environment with TLS
// (sslmode=verify-full, sslrootcert = the quickstart CA) and checks: simple
// statements, PreparedStatement (server-prepared after prepareThreshold),
// batch inserts, a transaction rolled back, COPY in and out (CopyManager),
// Statement.cancel(), and a policy denial that leaves the session usable.
// Prints one `ok <step>` line per step and exits non-zero on the first
// failure.
//
// Environment: TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA TW_TABLE.

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class Compat {
    static final String T = System.getenv("TW_TABLE");

    static void fail(String what) {
        System.out.println("FAIL " + what);
        System.out.flush();
        System.exit(1);
    }

    static void check(boolean cond, String what) {
        if (!cond) fail(what);
        System.out.println("ok " + what);
        System.out.flush();
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("TW_HOST") + ":" + System.getenv("TW_PORT")
                + "/" + System.getenv("TW_DB");
        Properties p = new Properties();
        p.setProperty("user", System.getenv("TW_USER"));
        p.setProperty("password", System.getenv("TW_PASSWORD"));
        p.setProperty("sslmode", "verify-full");
        p.setProperty("sslrootcert", System.getenv("TW_CA"));
        p.setProperty("connectTimeout", "10");
        p.setProperty("prepareThreshold", "2");
        return DriverManager.getConnection(url, p);
    }

    static long scalar(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getLong(1);
        }
    }

    static String text(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getString(1);
        }
    }

    public static void main(String[] args) throws Exception {
        System.out.println("version pgjdbc " + org.postgresql.Driver.getVersion());
        try (Connection c = connect()) {
            // verify-full would have refused a plaintext or unverified connection
            check(c.isValid(5), "tls verify-full");

            // simple statements, two in one message
            try (Statement s = c.createStatement()) {
                s.execute("SELECT 40 + 2; DELETE FROM " + T + " WHERE id < 0");
                try (ResultSet r = s.getResultSet()) {
                    r.next();
                    check(r.getInt(1) == 42, "simple query");
                }
            }

            // batch inserts and a PreparedStatement reused past prepareThreshold
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + T + " (id, name) VALUES (?, ?)")) {
                for (int i = 1; i <= 20; i++) {
                    ins.setInt(1, i);
                    ins.setString(2, "n" + i);
                    ins.addBatch();
                }
                ins.executeBatch();
            }
            StringBuilder names = new StringBuilder();
            try (PreparedStatement sel = c.prepareStatement("SELECT name FROM " + T + " WHERE id = ?")) {
                for (int id : new int[] {3, 7, 11}) {
                    sel.setInt(1, id);
                    try (ResultSet r = sel.executeQuery()) {
                        r.next();
                        names.append(r.getString(1)).append(',');
                    }
                }
                boolean serverPrepared = sel.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
                check(names.toString().equals("n3,n7,n11,") && serverPrepared
                        && scalar(c, "SELECT count(*) FROM " + T) == 20, "prepared statement");
            }

            // transaction rolled back
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO " + T + " (id, name) VALUES (100, 'gone')");
                s.executeUpdate("UPDATE " + T + " SET name = 'changed'");
            }
            long inside = scalar(c, "SELECT count(*) FROM " + T);
            c.rollback();
            c.setAutoCommit(true);
            check(inside == 21 && scalar(c, "SELECT count(*) FROM " + T) == 20
                    && text(c, "SELECT name FROM " + T + " WHERE id = 1").equals("n1"), "transaction rollback");

            // COPY FROM STDIN and TO STDOUT
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder data = new StringBuilder();
            for (int i = 1000; i < 1500; i++) data.append(i).append("\tcopied ").append(i).append('\n');
            long in = cm.copyIn("COPY " + T + " (id, name) FROM STDIN", new StringReader(data.toString()));
            StringWriter out = new StringWriter();
            long outRows = cm.copyOut("COPY (SELECT id, name FROM " + T + " WHERE id >= 1000) TO STDOUT", out);
            check(in == 500 && outRows == 500 && out.toString().split("\n").length == 500, "copy in and out");

            // a denial is an ordinary SQLException; the session stays usable
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE compat_jdbc_denied (a int)");
                fail("ddl as app_runtime in prod was not denied");
            } catch (SQLException e) {
                if (!"42501".equals(e.getSQLState()) || !e.getMessage().contains("tierwarden: denied")) {
                    fail("denial: " + e.getSQLState() + " " + e.getMessage());
                }
            }
            check(scalar(c, "SELECT 1") == 1, "denial 42501, session usable");

            cancel(c);
        }
        System.out.println("ALL OK");
    }

    static void cancel(Connection watcher) throws Exception {
        try (Connection victim = connect(); Statement s = victim.createStatement()) {
            long pid = scalar(victim, "SELECT pg_backend_pid()");
            CompletableFuture<String> outcome = CompletableFuture.supplyAsync(() -> {
                try {
                    s.execute("SELECT pg_sleep(60)");
                    return "finished";
                } catch (SQLException e) {
                    return e.getSQLState();
                }
            });
            boolean started = false;
            for (int i = 0; i < 200 && !started; i++) {
                started = "PgSleep".equals(text(watcher,
                        "SELECT coalesce(max(wait_event), '') FROM pg_stat_activity WHERE pid = " + pid));
                if (!started) Thread.sleep(50);
            }
            if (!started) fail("the query to cancel never started");
            s.cancel();
            String got = outcome.get(30, TimeUnit.SECONDS);
            check("57014".equals(got), "cancel (" + got + ")");
            check(scalar(victim, "SELECT 2") == 2, "session usable after cancel");
        }
    }
}
