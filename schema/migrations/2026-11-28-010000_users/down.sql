DROP TABLE sessions;
DROP TABLE login_challenges;
DROP TABLE users;
